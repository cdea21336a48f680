"""CenterNet res_18: model, focal-loss targets and peak decoding."""
