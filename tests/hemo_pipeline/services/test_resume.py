"""Every branch of the resume decision (`hemo train`/`refine --resume`): continue only a checkpoint
made with the same settings, data and code; never drop an unfinished one made otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.resume import resume_from

CURRENT = {"digest": "same", "parts": {"train": "t1", "model": "m1", "data": "d1", "code": "c1"}}


def _last(folder: Path, fingerprint: dict | None, epoch: int = 2, target: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model_state": {}, "epoch": epoch, "target_epochs": target, "marker": "this one"}
    if fingerprint is not None:
        payload["fingerprint"] = fingerprint
    torch.save(payload, folder / "last.pt")
    return folder


def _other(**changed: str) -> dict:
    return {"digest": "other", "parts": {**CURRENT["parts"], **changed}}


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_same_settings_data_and_code_continue_from_the_payload_read_once(tmp_path: Path, mode: str) -> None:
    payload = resume_from(mode, _last(tmp_path, CURRENT), CURRENT, "train")
    assert payload is not None and payload["marker"] == "this one" and payload["epoch"] == 2


def test_never_starts_over_whatever_is_there(tmp_path: Path) -> None:
    assert resume_from("never", _last(tmp_path, CURRENT), CURRENT, "train") is None
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert resume_from("never", tmp_path, CURRENT, "train") is None  # not even read


def test_nothing_to_continue(tmp_path: Path) -> None:
    assert resume_from("auto", tmp_path, CURRENT, "train") is None
    with pytest.raises(UserError, match="--resume given but .*last.pt does not exist"):
        resume_from("always", tmp_path, CURRENT, "train")


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_an_unreadable_checkpoint_is_a_user_error(tmp_path: Path, mode: str) -> None:
    tmp_path.joinpath("last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot be read .* delete it or pass --resume never"):
        resume_from(mode, tmp_path, CURRENT, "train")


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_an_unfinished_run_made_otherwise_is_never_dropped(tmp_path: Path, mode: str) -> None:
    folder = _last(tmp_path, _other(train="t2", data="d2"), epoch=2, target=6)
    with pytest.raises(UserError, match=r"unfinished run made with other data, train than now"):
        resume_from(mode, folder, CURRENT, "train")
    assert (folder / "last.pt").is_file()


def test_a_finished_run_made_otherwise_is_retrained_under_auto(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = _last(tmp_path, _other(code="c2"), epoch=6, target=6)
    assert resume_from("auto", folder, CURRENT, "train") is None
    assert "finished run with other code; starting fresh" in capsys.readouterr().out


def test_a_finished_run_made_otherwise_cannot_be_continued_with_always(tmp_path: Path) -> None:
    folder = _last(tmp_path, _other(model="m2"), epoch=6, target=6)
    with pytest.raises(UserError, match="earlier run made with other model"):
        resume_from("always", folder, CURRENT, "train")


def test_a_checkpoint_without_a_fingerprint_is_an_older_release(tmp_path: Path) -> None:
    folder = _last(tmp_path, None, epoch=1, target=6)
    with pytest.raises(UserError, match="unknown \\(a checkpoint of an older release\\)"):
        resume_from("auto", folder, CURRENT, "train")
