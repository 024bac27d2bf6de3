"""The production artifact path: an MLflow server storing artifacts in S3 (the S3-protocol test
server standing in for MinIO). A model logged through it is registered, loaded back by alias and
scores identically; its files are really in the bucket."""

from __future__ import annotations

from pathlib import Path

import boto3
import mlflow
import pytest
import torch

from hemo_model.model.networks import HemoNet
from hemo_model.model.spec import ModelSpec
from hemo_pipeline.services import registry, tracking
from tests.conftest import S3_CREDENTIALS, running_mlflow_server


@pytest.mark.slow
def test_model_round_trip_through_s3_artifacts(tmp_path: Path, s3_server: str, s3_bucket: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server_env = {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    with running_mlflow_server(tmp_path, artifacts_destination=f"s3://{s3_bucket}/mlflow", env=server_env) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
        torch.manual_seed(0)
        model = HemoNet().eval()
        config = ModelSpec(image_size=64, thresholds=[0.4, 0.5, 0.5, 0.6, 0.3])
        tracking.configure()
        provenance = {"split": {"salt": "s", "val_fraction": 0.1, "gate_fraction": 0.1},
                      "train_patients": ["ID_a"], "train_patients_sha256": "0" * 64}
        with mlflow.start_run():
            version = registry.log_and_register(model, config, provenance)
        mlflow.MlflowClient().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, version)

        loaded = registry.load_model(f"models:/{registry.MODEL_NAME}@{registry.CHAMPION}")
        assert loaded.version == version and loaded.image_size == 64
        assert loaded.thresholds_for(5) == [0.4, 0.5, 0.5, 0.6, 0.3]
        batch = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(loaded.module(batch), model(batch))

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.startswith("mlflow/") and k.endswith("/spec.json") for k in keys), keys
    assert any(k.startswith("mlflow/") and k.endswith("/model.safetensors") for k in keys), keys
