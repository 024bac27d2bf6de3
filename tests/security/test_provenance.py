"""Provenance is read from a version's own run, never from its tags: a tag is not a URL to follow
(it would carry the MLflow credentials to any host) nor a digest to trust (whoever can tag a
version could hide that it trained on gate patients)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from hemo_model.data.roles import patients_digest
from hemo_pipeline.cli import main
from hemo_pipeline.services import registry
from hemo_pipeline.services.patient_roles import load_roles
from hemo_pipeline.services.settings import SplitSettings
from tests.conftest import running_mlflow_server
from tests.markers import write_marker_data
from tests.security.registry_setup import PARAMS, register_hemo

SECRET = "s3cr3t-tracking-password"


@pytest.fixture(scope="module")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_marker_data(tmp_path_factory.mktemp("markers") / "data", patients=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture
def project(marker_data: Path, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data").symlink_to(marker_data)
    (tmp_path / "params.yaml").write_text(PARAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    mlflow.set_tracking_uri(server)
    return tmp_path


@pytest.fixture
def foreign_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A host that is not the tracking server; records every request it receives."""
    received: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            received.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            body = json.dumps({"train_patients": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def _gate_patients() -> list[str]:
    split = SplitSettings(val_fraction=0.2, gate_fraction=0.4, salt="markers")
    return [p.dirname for p in load_roles(Path("data"), split, need=("gate",))["gate"]]


def test_a_provenance_tag_is_never_a_url_to_follow(project: Path, foreign_server: tuple[str, list],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url, received = foreign_server
    version = register_hemo([])
    # MLflow's client sends MLFLOW_TRACKING_USERNAME/PASSWORD to whatever host this names
    foreign = url.replace("http://", "mlflow-artifacts://") + "/steal/train_patients.json"
    registry.tag_version(version, {"hemo.train_patients.artifact": foreign,
                                   "hemo.train_patients.sha256": patients_digest([])})
    code = main(["gate", "--version", version, "--device", "cpu"])
    output = capsys.readouterr()
    assert code == 0, output.err
    assert received == [], f"the gate contacted a host named by a tag: {received}"
    assert SECRET not in output.out + output.err


def test_forged_provenance_tags_cannot_hide_gate_patients(project: Path, foreign_server: tuple[str, list],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The version trained on gate patients (its run says so); tags claiming an empty training
    list, with a matching digest and an artifact of another run, change nothing."""
    gate = _gate_patients()
    champion = registry.alias_version(registry.CHAMPION)
    version = register_hemo(gate[:2] + ["ID_elsewhere"])
    with mlflow.start_run(run_name="forger") as forger:
        mlflow.log_dict({"train_patients": []}, registry.TRAIN_PATIENTS_ARTIFACT)
    registry.tag_version(version, {
        "hemo.train_patients.artifact": f"runs:/{forger.info.run_id}/{registry.TRAIN_PATIENTS_ARTIFACT}",
        "hemo.train_patients.sha256": patients_digest([])})
    capsys.readouterr()
    assert main(["gate", "--version", version, "--device", "cpu"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"v{version} trained on 2 of the {len(gate)} gate patients" in error[0], error
    assert registry.alias_version(registry.CHAMPION) == champion


def _fingerprinted_copy(marker_data: Path, pairs: bool = False) -> dict[str, str]:
    """Replace the project's data link by a copy of the marker data with a series.csv: a pixel
    fingerprint per folder and, with ``pairs``, two folders per patient key. Returns
    {dirname: fingerprint}."""
    import hashlib
    import shutil

    Path("data").unlink()
    shutil.copytree(marker_data, "data")
    dirnames = sorted(p.name for p in Path("data/train").iterdir())
    prints = {d: hashlib.sha256(d.encode()).hexdigest() for d in dirnames}
    rows = [f"{d},{f'P_pair{i // 2}' if pairs else d},{prints[d]}" for i, d in enumerate(dirnames)]
    Path("data/series.csv").write_text("dirname,patient,pixels_sha256\n" + "\n".join(rows) + "\n")
    return prints


def test_a_gate_scan_trained_on_under_another_name_is_refused_by_its_pixels(
        project: Path, marker_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A re-import with another DICOM salt gives every training scan a new folder name (and key),
    so the lists of names and keys do not meet the gate; the recorded pixel fingerprints do."""
    prints = _fingerprinted_copy(marker_data)
    gate = _gate_patients()
    champion = registry.alias_version(registry.CHAMPION)
    version = register_hemo(["ID_renamed1", "ID_renamed2"], train_series=[prints[gate[0]], "f" * 64])
    capsys.readouterr()
    assert main(["gate", "--version", version, "--device", "cpu"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"v{version} trained on the pixels of 1 of the {len(gate)} gate scans" in error[0], error
    assert gate[0] in error[0] and registry.alias_version(registry.CHAMPION) == champion


def test_the_gate_judges_patients_not_scans(project: Path, marker_data: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Two scans per patient key: both in one role, counted, resampled and reported as one patient,
    and a version that trained on a patient's other scan is refused although it never saw this one."""
    _fingerprinted_copy(marker_data, pairs=True)
    split = SplitSettings(val_fraction=0.2, gate_fraction=0.4, salt="markers")
    roles = load_roles(Path("data"), split, need=("gate",))
    keys = {role: {p.patient_key for p in scans} for role, scans in roles.items()}
    assert all(not (keys[a] & keys[b]) for a in keys for b in keys if a < b)  # no patient in two roles
    gate_scans = roles["gate"]
    assert len(gate_scans) == 2 * len(keys["gate"])
    version = register_hemo([p.patient_key for p in roles["train"]])
    capsys.readouterr()
    assert main(["gate", "--version", version, "--device", "cpu", "--set", "gate.min_patients=2",
                 "--reports", "reports"]) == 0, capsys.readouterr().err
    decision = json.loads(Path("reports/gate.json").read_text())
    assert decision["gate_patients"] == len(keys["gate"]) and decision["gate_scans"] == len(gate_scans)
    assert f"{len(keys['gate'])} patients ({len(gate_scans)} scans" in Path("reports/gate_report.md").read_text()
    leaked = register_hemo([gate_scans[0].patient_key])  # its key: the patient's other scan, say
    capsys.readouterr()
    assert main(["gate", "--version", leaked, "--device", "cpu", "--set", "gate.min_patients=2"]) == 2
    assert f"trained on 1 of the {len(keys['gate'])} gate patients" in capsys.readouterr().err


def test_a_version_that_recorded_folders_is_checked_against_a_gate_keyed_by_patient(
        project: Path, marker_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A release before patient keys recorded scan folders; after an upgrade the gate is keyed by
    patient (series.csv). A gate scan whose folder that version trained on is still caught, and its
    run records no scan fingerprints (unknown, not "none")."""
    _fingerprinted_copy(marker_data, pairs=True)
    split = SplitSettings(val_fraction=0.2, gate_fraction=0.4, salt="markers")
    gate_scans = load_roles(Path("data"), split, need=("gate",))["gate"]
    old = register_hemo([gate_scans[0].dirname, "ID_elsewhere"], scans_recorded=False)
    assert registry.seen_patients(old)["train_series"] is None
    capsys.readouterr()
    assert main(["gate", "--version", old, "--device", "cpu", "--set", "gate.min_patients=2"]) == 2
    assert f"v{old} trained on 1 of the {len({p.patient_key for p in gate_scans})} gate patients" in \
        capsys.readouterr().err
