"""MFP: soft filter pruning whose criterion is switched per epoch by a meta-attribute."""
