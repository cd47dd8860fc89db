"""Training: the cycle schedule, the LightningModule, discovery between phases, and the command line."""
