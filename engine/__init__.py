"""Runtime of the entry points: the process group and devices (train, eval, predict), the text log (train,
eval), and for training its records, run checkpoints and resume, optimiser and LR schedule, reproducibility."""
