"""Training: one Trainer (AMP, EMA, DDP, callbacks), its schedule, atomic checkpoints and run logs."""
