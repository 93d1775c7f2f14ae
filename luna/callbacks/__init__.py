"""What watches a run: checkpoints, figures, predictions, console lines, the learning-rate finder."""
