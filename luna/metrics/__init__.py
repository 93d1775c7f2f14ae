"""torchmetrics of a training, validation or test stage, exact under DDP."""
