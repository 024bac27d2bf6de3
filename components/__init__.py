"""components: the pipeline steps of hemo-pipeline.

Each module is one step, exposed as a ``hemo <step>`` subcommand: it parses arguments and
``params.yaml``, calls :mod:`hemo_model`, logs to MLflow and writes its outputs atomically.
Orchestrators (``dvc.yaml``, the Airflow DAG) only ever call these commands.
"""
