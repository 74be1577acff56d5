"""Running training: one run tracked in MLflow, in this process, a child process or under
torchrun (training.py), a window of at most k runs at once (processes.py), progress events
(progress.py), what flows hand back (outcomes.py)."""
