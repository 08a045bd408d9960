"""Training runtime: run checkpoints and resume, logging, distributed helpers, optimiser and LR schedule,
reproducibility."""
