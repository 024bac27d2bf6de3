"""Attack: credentials for a step read from a file other users can read (or plant), or leaked by
the loader itself. components.credentials.load_secrets_file takes only a private file (no access
for others, no group write), only known keys, and never names a value in what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.credentials import KNOWN_KEYS, SECRETS_FILE_ENV, load_secrets_file
from components.errors import UserError

PASSWORD = "s3cr3t-Pa55-do-not-print"
GOOD = f"MLFLOW_TRACKING_USERNAME=hemo-pipeline\nMLFLOW_TRACKING_PASSWORD={PASSWORD}\n"


def _secrets(tmp_path: Path, text: str = GOOD, mode: int = 0o600) -> Path:
    path = tmp_path / "hemo-step.env"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_private_file_sets_the_known_keys(tmp_path: Path) -> None:
    env = {SECRETS_FILE_ENV: str(_secrets(tmp_path, "# writer\n\n" + GOOD, 0o400))}
    assert load_secrets_file(env) == ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"]
    assert env["MLFLOW_TRACKING_PASSWORD"] == PASSWORD and env["MLFLOW_TRACKING_USERNAME"] == "hemo-pipeline"


def test_no_variable_no_file_no_change() -> None:
    env = {"MLFLOW_TRACKING_PASSWORD": "kept"}
    assert load_secrets_file(env) == [] and env == {"MLFLOW_TRACKING_PASSWORD": "kept"}


def test_group_readable_is_accepted_as_kubernetes_fsgroup_mounts_it(tmp_path: Path) -> None:
    env = {SECRETS_FILE_ENV: str(_secrets(tmp_path, mode=0o440))}
    assert "MLFLOW_TRACKING_PASSWORD" in load_secrets_file(env)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601, 0o620, 0o666])
def test_a_file_others_may_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    env = {SECRETS_FILE_ENV: str(_secrets(tmp_path, mode=mode))}
    with pytest.raises(UserError) as refused:
        load_secrets_file(env)
    message = str(refused.value)
    assert "other users may read or change it" in message and f"{mode:04o}" in message and "chmod 600" in message
    assert PASSWORD not in message and "MLFLOW_TRACKING_PASSWORD" not in env


@pytest.mark.parametrize("text, expected", [
    (f"MLFLOW_TRACKING_PASSWORD {PASSWORD}\n", "line 1 is not KEY=value"),
    (f"\nMLFLOW_ALLOW_PICKLE_DESERIALIZATION=true\nX={PASSWORD}\n", "line 2 sets MLFLOW_ALLOW_PICKLE_DESERIALIZATION"),
    (f"PATH=/tmp/evil:{PASSWORD}\n", "line 1 sets PATH"),
    ("MLFLOW_TRACKING_PASSWORD=\n", "line 1 gives MLFLOW_TRACKING_PASSWORD no value"),
])
def test_bad_lines_are_refused_by_number_without_their_value(tmp_path: Path, text: str, expected: str) -> None:
    env = {SECRETS_FILE_ENV: str(_secrets(tmp_path, text))}
    with pytest.raises(UserError) as refused:
        load_secrets_file(env)
    assert expected in str(refused.value) and PASSWORD not in str(refused.value)
    assert set(env) == {SECRETS_FILE_ENV}  # nothing half-applied


def test_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_secrets_file({SECRETS_FILE_ENV: str(tmp_path / "absent.env")})
    with pytest.raises(UserError, match="not a regular file"):
        load_secrets_file({SECRETS_FILE_ENV: str(tmp_path)})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read the file as another uid (setpriv)")
def test_unreadable_for_the_step_user_is_a_user_error(tmp_path: Path) -> None:
    import shutil

    if not shutil.which("setpriv"):
        pytest.skip("setpriv not installed")
    tmp_path.chmod(0o755)
    path = _secrets(tmp_path, mode=0o600)  # root's, private: uid 1000 cannot read it
    probe = ("import sys\nfrom components.credentials import load_secrets_file\nfrom components.errors import UserError\n"
             f"try:\n    load_secrets_file({{'HEMO_SECRETS_FILE': {str(path)!r}}})\nexcept UserError as e:\n"
             "    print(e); sys.exit(2)\n")
    result = subprocess.run(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", sys.executable, "-c", probe],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "permission denied for uid 1000" in result.stdout and PASSWORD not in result.stdout + result.stderr


def test_only_credentials_and_their_endpoint_may_be_set() -> None:
    assert KNOWN_KEYS == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL",
                          "HEMO_DICOMWEB_TOKEN", "HEMO_DICOMWEB_USERNAME", "HEMO_DICOMWEB_PASSWORD"}


def test_the_file_secrets_init_writes_is_accepted(tmp_path: Path) -> None:
    """docker/secrets-init.sh (the stack's writer of the step file) and this loader agree: mode,
    format, keys; and the script puts no value on a command line (printf is a builtin)."""
    root = tmp_path / "volumes"
    (root / "step").mkdir(parents=True)
    (root / "airflow").mkdir()
    script = Path(__file__).resolve().parents[2] / "docker" / "secrets-init.sh"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HEMO_SECRETS_ROOT": str(root),
           "HEMO_CONTAINER_UID": str(os.getuid()), "HEMO_CONTAINER_GID": str(os.getgid()),
           "MLFLOW_WRITER_USERNAME": "hemo-pipeline", "MLFLOW_WRITER_PASSWORD": PASSWORD,
           "MINIO_DVC_ACCESS_KEY": "hemo-dvc", "MINIO_DVC_SECRET_KEY": PASSWORD + "-dvc"}
    result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    step = root / "step" / "hemo-step.env"
    assert oct(step.stat().st_mode & 0o777) == "0o400"
    loaded = {SECRETS_FILE_ENV: str(step)}
    load_secrets_file(loaded)
    assert loaded["MLFLOW_TRACKING_USERNAME"] == "hemo-pipeline" and loaded["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    dvc = (root / "airflow" / "dvc-credentials")
    assert oct(dvc.stat().st_mode & 0o777) == "0o400" and f"aws_secret_access_key = {PASSWORD}-dvc" in dvc.read_text()


CLI_LOADS_SECRETS = "load_secrets_file" in (Path(__file__).resolve().parents[2] / "components" / "cli.py").read_text()


@pytest.mark.skipif(not CLI_LOADS_SECRETS, reason="components/cli.py main() does not call load_secrets_file() yet")
@pytest.mark.parametrize("mode, expected", [(0o644, "other users may read or change it"), (0o600, None)])
def test_hemo_reads_the_file_at_start_and_refuses_a_world_readable_one(tmp_path: Path, mode: int, expected: str | None) -> None:
    """Every `hemo` step: a world-readable secrets file stops it in one line (exit 2) naming no
    value; a private one is taken (the step then goes on to its own work: here an empty data folder)."""
    secrets_file = _secrets(tmp_path, mode=mode)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(HEMO_SECRETS_FILE=str(secrets_file), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run([sys.executable, "-m", "components.cli", "validate", "--data", str(tmp_path / "absent")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert PASSWORD not in result.stdout + result.stderr
    if expected:
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    else:
        assert "HEMO_SECRETS_FILE" not in result.stderr, result.stderr
