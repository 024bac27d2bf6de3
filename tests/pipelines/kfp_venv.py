"""Where the tests find kfp: `.venv-kfp` (made by `make kfp-venv`, a prerequisite of `make test`).

kfp cannot live in the main venv (it needs kubernetes<31 and protobuf<7, Airflow's Kubernetes
provider kubernetes>=36), so the tests run in the main venv and shell out to this one. A pytest run
started by hand without it tries `make kfp-venv` once; if the venv still cannot be made (no
Python 3.11, no package index), the Kubeflow tests skip and say why.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KFP_VENV = Path(os.environ.get("HEMO_KFP_VENV", REPO / ".venv-kfp"))
STAMP = KFP_VENV / ".hemo-kfp-installed"


@functools.lru_cache(maxsize=1)
def _ensure() -> str | None:
    """None when the venv is ready, else why it is not."""
    if STAMP.is_file():
        return None
    try:
        made = subprocess.run(["make", "-s", "kfp-venv", f"KFP_VENV={KFP_VENV}"], cwd=REPO, capture_output=True,
                              text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run `make kfp-venv`: {exc}"
    if made.returncode != 0 or not STAMP.is_file():
        return f"`make kfp-venv` failed (exit {made.returncode}): {(made.stderr or made.stdout).strip()[-500:]}"
    return None


def kfp_python() -> str:
    """The kfp venv's python; skips the calling test when the venv cannot be made."""
    reason = _ensure()
    if reason:
        pytest.skip(f"Kubeflow toolbox venv {KFP_VENV} unavailable: {reason}")
    return str(KFP_VENV / "bin" / "python")


def run_kfp(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """``python <args>`` in the kfp venv from the repository root (so `hemo_pipeline`, `pipelines` import)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **kwargs.pop("env", {})}
    return subprocess.run([kfp_python(), *args], cwd=kwargs.pop("cwd", REPO), env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)
