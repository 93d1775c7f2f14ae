"""The LightningModule (network, loss, steps), augmentation on the device and fine-tuning."""
