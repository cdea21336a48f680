"""AutoSlim (Yu & Huang 2019): slimmable training and greedy slimming to a FLOPs budget."""
