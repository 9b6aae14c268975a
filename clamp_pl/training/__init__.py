"""Lightning training: the LightningModule, optimiser and schedule, loggers and callbacks."""
