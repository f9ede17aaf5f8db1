"""The shared trainer: loop, seeding, EMA, checkpoints, logging."""
