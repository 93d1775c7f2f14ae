"""Experiments over many runs: hyperparameter sweeps and seed repeats (Optuna studies), and
LUNA16's ten-fold cross-validation. The commands (``luna.cli.tune``, ``luna.cli.crossval``) parse
arguments and print; the work is here."""
