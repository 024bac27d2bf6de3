"""`fit` under a 2-process gloo group takes the same steps as one process with the same global batch.

The sampler, the loss scaling and DDP's gradient averaging are what make data-parallel training
the same optimisation as the single-process one. With a model whose forward does not depend on
how the batch is split (no BatchNorm, no dropout) and no augmentation, the two runs must end with
the same weights and the same per-epoch loss, to float precision. The real network has BatchNorm
(per-process statistics on the CPU), so end to end under torchrun the curves only agree in trend:
tests/e2e/test_distributed.py covers that path and restarts.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from hemo_model.model.losses import build_loss
from hemo_model.model.spec import ModelSpec
from hemo_model.training.checkpointer import Checkpointer
from hemo_model.training.config import FitConfig
from hemo_model.training.distributed import SINGLE, from_environment, init
from hemo_model.training.loop import fit
from tests.conftest import free_port

CONFIG = FitConfig(epochs=2, batch_size=8, lr=1e-2, step_size=1, gamma=0.5, precision="fp32", seed=3)


class LabelledTensors(TensorDataset):
    """Tensors that tell their labels, as the slice datasets do (for repeat-factor sampling)."""

    def item_labels(self):
        return self.tensors[1].numpy()


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=generator)
    targets = (torch.rand(32, 5, generator=generator) < torch.tensor([0.3, 0.3, 0.3, 0.3, 0.05])).float()
    return LabelledTensors(images, targets)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 5))


def _train(out: Path, cluster=SINGLE, loss: str = "asl", sampling: str = "uniform") -> None:
    model = _model()
    config = dataclasses.replace(CONFIG, sampling=sampling, repeat_threshold=0.3)
    fit(model, _data(), lambda m: 0.0, build_loss(loss, reduction="sum"), config, Checkpointer(out, ModelSpec()),
        progress=False, augmentation=None, cluster=cluster)


def _worker(rank: int, port: int, out: str, loss: str, sampling: str = "uniform") -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), HEMO_DIST_TIMEOUT_S="120")  # a stuck rank fails, never hangs
    torch.set_num_threads(1)
    cluster = from_environment()
    init(cluster, torch.device("cpu"))
    try:
        _train(Path(out), cluster, loss, sampling)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(("loss", "sampling"), [("asl", "uniform"), ("bce", "uniform"), ("asl", "repeat_factor")])
def test_two_processes_take_the_steps_of_one(tmp_path: Path, loss: str, sampling: str) -> None:
    _train(tmp_path / "one", loss=loss, sampling=sampling)
    mp.spawn(_worker, args=(free_port(), str(tmp_path / "two"), loss, sampling), nprocs=2, join=True)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert [h["epoch"] for h in two["history"]] == [1, 2]
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    start = _model().state_dict()
    largest = max(float((two["model_state"][k] - v).abs().max()) for k, v in one["model_state"].items())
    print(f"{loss}: epoch losses, 1 process {[round(h['train_loss'], 6) for h in one['history']]}, 2 processes "
          f"{[round(h['train_loss'], 6) for h in two['history']]}; largest weight difference {largest:.2e}")
    for name, value in one["model_state"].items():
        assert not torch.allclose(value, start[name])  # it trained
        torch.testing.assert_close(two["model_state"][name], value, rtol=1e-4, atol=1e-5)


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from hemo_model.training.distributed import Cluster

    with pytest.raises(ValueError, match="not divisible by 2"):
        fit(_model(), _data(), lambda m: 0.0, build_loss("asl"), replace(CONFIG, batch_size=7),
            Checkpointer(tmp_path, ModelSpec()), progress=False, augmentation=None, cluster=Cluster(0, 2, 0))


@pytest.mark.parametrize(("value", "seconds"), [("", None), ("120", 120.0), (" 2.5 ", 2.5)])
def test_group_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str,
                                            seconds: float | None) -> None:
    from hemo_model.training.distributed import TIMEOUT_ENV, group_timeout

    monkeypatch.setenv(TIMEOUT_ENV, value)
    timeout = group_timeout()
    assert (timeout.total_seconds() if timeout else None) == seconds


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_group_timeout_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from hemo_model.training.distributed import TIMEOUT_ENV, group_timeout

    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match="HEMO_DIST_TIMEOUT_S"):
        group_timeout()


def test_a_rank_whose_peer_never_comes_fails_after_the_group_timeout(tmp_path: Path) -> None:
    """Rank 0 of 2 with no rank 1: joining fails after HEMO_DIST_TIMEOUT_S instead of gloo's 30 min."""
    import subprocess
    import sys
    import time

    script = ("import torch\nfrom hemo_model.training.distributed import from_environment, init\n"
              "init(from_environment(), torch.device('cpu'))\n")
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "HEMO_DIST_TIMEOUT_S": "3", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[3], env=env,
                            capture_output=True, text=True, timeout=120)
    waited = time.perf_counter() - started
    assert result.returncode != 0 and "timed out" in result.stderr.lower(), result.stderr[-2000:]
    assert waited < 60, f"took {waited:.0f} s"
