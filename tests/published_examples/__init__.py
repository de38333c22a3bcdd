"""pytorch-accelerated 0.1.61's published examples, adapted only where they download data."""
