"""`hemo import-dicom --dicomweb` against a real PACS: Debian's Orthanc with its DICOMweb plugin on
127.0.0.1 (free ports, throwaway storage and config), filled with phantom studies over STOW-RS.
The import by study UIDs and the import by query (modality + date) must write byte for byte what
the import of the same files from disk writes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from hemo_model.data.synth_dicom import generate_dicom_dataset
from hemo_pipeline.cli import main
from tests.conftest import free_port, wait_for_http

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@contextlib.contextmanager
def _running_orthanc(work: Path, **config: object) -> Iterator[str]:
    """An Orthanc in ``work`` (extra ``config`` keys on top of the test's); yields its DICOMweb root URL."""
    if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (`make test` installs the Debian packages "
                    "orthanc and orthanc-dicomweb when it runs as root with apt; or install them by hand)")
    http_port = free_port()
    config = {
        "Name": "HEMO_TEST", "HttpPort": http_port, "DicomPort": free_port(), "DicomAet": "HEMOTEST",
        "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
        # Orthanc 1.10 cannot bind to loopback only; this refuses every non-loopback client.
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False, **config,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = (work / "orthanc.log").open("wb")
    process = subprocess.Popen([str(ORTHANC), "--no-jobs", str(work / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_http(f"{base}/system", timeout=30, process=process)
        yield f"{base}/dicom-web"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Orthanc; yields its DICOMweb root URL."""
    with _running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url


@pytest.fixture(scope="module")
def phantom_in_pacs(orthanc: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Phantom studies on disk (flat, opaque names) and the same files STOWed into Orthanc."""
    from dicomweb_client import DICOMwebClient

    root = tmp_path_factory.mktemp("pacs-phantom")
    generate_dicom_dataset(root, train_patients=2, test_patients=1, image_size=48, seed=11, shuffle_names=True)
    datasets = [pydicom.dcmread(p) for p in sorted((root / "train").iterdir())]
    datasets += [pydicom.dcmread(p) for p in sorted((root / "test").iterdir())]
    response = DICOMwebClient(url=orthanc).store_instances(datasets=datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets) and not response.get("FailedSOPSequence")
    train_studies = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
                            for p in (root / "train").iterdir()})
    return root, train_studies


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dicomweb_import_equals_the_import_from_disk(orthanc: str, phantom_in_pacs: tuple[Path, list[str]],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root, studies = phantom_in_pacs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMO_DICOM_SALT", "orthanc-test")
    labels = str(root / "train_labels.csv")
    common = ["import-dicom", "--no-mlflow", "--labels", labels]
    assert main([*common, "--dicom", str(root / "train"), "--out", "disk", "--mapping", "disk.csv"]) == 0
    study_args = [a for s in studies for a in ("--study", s)]
    assert main([*common, "--dicomweb", orthanc, "--allow-http", *study_args, "--out", "web", "--mapping",
                 "web.csv"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err.startswith("warning: --allow-http: traffic with http://127.0.0.1:")
    assert "dicomweb: 4 series / " in out  # 2 axial series + 2 localizers (CT too)
    assert "import-dicom: 2 series -> web/train" in out
    assert json.loads(Path("reports/import.json").read_text())["source"] == "dicomweb"
    assert _tree(Path("web")) == _tree(Path("disk")) and len(_tree(Path("disk"))) > 40
    assert Path("web.csv").read_bytes() == Path("disk.csv").read_bytes()

    # by query: every CT series of studies from 2023 on (train and test patients) into the test split
    assert main(["import-dicom", "--no-mlflow", "--dicom", str(root / "train"), "--out", "disk-all"]) == 0
    assert main(["import-dicom", "--no-mlflow", "--dicom", str(root / "test"), "--out", "disk-all"]) == 0
    assert main(["import-dicom", "--no-mlflow", "--dicomweb", orthanc, "--allow-http", "--modality", "CT", "--since",
                 "20230101", "--out", "web-all"]) == 0
    assert _tree(Path("web-all")) == _tree(Path("disk-all")) and len(os.listdir("web-all/test")) == 3
    assert list(Path(tempfile.gettempdir()).glob("hemo-dicomweb-*")) == []  # the download folder is removed


@pytest.mark.slow
def test_dicomweb_failures_are_one_line(orthanc: str, phantom_in_pacs: tuple[Path, list[str]], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMO_DICOM_SALT", "orthanc-test")
    unknown = "1.2.3.4.5.6.7.8.9"
    assert main(["import-dicom", "--no-mlflow", "--dicomweb", orthanc, "--allow-http", "--study", unknown,
                 "--out", "d"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --study #1: the server has no CT series") and unknown not in error
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    monkeypatch.setenv("HEMO_DICOMWEB_ATTEMPTS", "1")  # the default retries for ~15 s
    assert main(["import-dicom", "--no-mlflow", "--dicomweb", dead, "--allow-http", "--since", "20230101",
                 "--out", "d"]) == 3
    assert "did not answer the search (QIDO-RS)" in capsys.readouterr().err
    assert not Path("d").exists()


@pytest.mark.slow
def test_dicomweb_credentials_come_from_the_environment_and_are_never_printed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Orthanc with basic auth: refused without credentials (exit 2), imported with them from the
    environment, and from the URL (with a warning); the password is in no output line."""
    import requests
    from dicomweb_client import DICOMwebClient

    user, password = "hemo-reader", "orthanc-S3cret"
    (tmp_path / "pacs").mkdir()
    with _running_orthanc(tmp_path / "pacs", AuthenticationEnabled=True, RegisteredUsers={user: password}) as url:
        session = requests.Session()
        session.auth = (user, password)
        (tmp_path / "pacs-phantom").mkdir()
        generate_dicom_dataset(tmp_path / "pacs-phantom", train_patients=0, test_patients=1, image_size=32, seed=3,
                               shuffle_names=True)
        datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "pacs-phantom" / "test").iterdir())]
        DICOMwebClient(url=url, session=session).store_instances(datasets=datasets)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HEMO_DICOM_SALT", "orthanc-test")
        query = ["import-dicom", "--no-mlflow", "--allow-http", "--since", "20230101"]

        assert main([*query, "--dicomweb", url, "--out", "none"]) == 2
        assert "refused the search (QIDO-RS) (HTTP 401): it needs credentials" in capsys.readouterr().err
        monkeypatch.setenv("HEMO_DICOMWEB_USERNAME", user)
        monkeypatch.setenv("HEMO_DICOMWEB_PASSWORD", password)
        assert main([*query, "--dicomweb", url, "--out", "from-env"]) == 0
        monkeypatch.delenv("HEMO_DICOMWEB_USERNAME")
        monkeypatch.delenv("HEMO_DICOMWEB_PASSWORD")
        in_url = url.replace("http://", f"http://{user}:{password}@")
        assert main([*query, "--dicomweb", in_url, "--out", "from-url"]) == 0
    captured = capsys.readouterr()
    assert "warning: --dicomweb carries credentials" in captured.err and "http://***@127.0.0.1:" in captured.err
    assert password not in captured.out + captured.err
    assert _tree(Path("from-env")) == _tree(Path("from-url")) and len(_tree(Path("from-env"))) > 20
