"""hemo_model: the pure ML library of hemo-pipeline.

Data layout, synthetic CT generator, model, loss, training, inference and metrics.
It imports only torch/torchvision/numpy/PIL/scikit-learn (and scipy, which scikit-learn
brings), so it can be used in a notebook without MLflow, DVC or Airflow installed.
"""

CLASSES: tuple[str, ...] = ("ich", "ivh", "sah", "sdh", "edh")
"""The five hemorrhage types, in the column order of the DLCV label file."""

LABEL_COLUMNS: tuple[str, ...] = ("dirname", "ID", *CLASSES)
"""Exact header of ``train.csv``."""

__all__ = ["CLASSES", "LABEL_COLUMNS"]
