"""Pieces every method may use: the channel mask (masked == pruned) and the one-shot pruner."""
