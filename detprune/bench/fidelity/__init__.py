"""The fidelity benchmark: each method's paper claim tested beside its baseline (``runner``), one
row module per method and the data they share."""
