"""Benchmarks that ship with the package, so ``detprune bench`` runs from an installed wheel: the
fidelity of each method beside its baseline, the engine against Torch-Pruning, latency, training
throughput, the seed paper's tables. Each module has ``main(argv)``; ``benchmarks/`` holds launchers
and the tables we measured (benchmarks/README.md)."""
