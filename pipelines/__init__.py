"""Orchestrator definitions that need their own environment (Kubeflow Pipelines: `.venv-kfp`).

Nothing in `components` or `hemo_model` imports this package: kfp cannot be installed next to
Airflow's Kubernetes provider (README, "Kubeflow").
"""
