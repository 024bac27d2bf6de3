"""Metrics: micro-F2 and per-class diagnostics, RSNA log loss, per-patient confusion counts and the
patient-level bootstrap over them."""
