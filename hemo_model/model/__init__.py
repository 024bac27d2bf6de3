"""The model: its spec (one ``ModelSpec`` from training to serving), the networks, the learned
context heads, the losses, and the network on disk (checkpoints, the registered model folder)."""
