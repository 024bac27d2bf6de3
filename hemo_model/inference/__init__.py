"""Inference: precision on the device, and scoring sequences at one forward pass per slice with
the 5-tap context filter or a learned context head."""
