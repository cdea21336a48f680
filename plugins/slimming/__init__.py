"""Network Slimming (Liu et al. 2017): sparsity on BN scales, a global threshold, beta folding."""
