"""The typed settings layer: method defaults, params.yaml, --set, flags; every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.settings import Settings, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_code_defaults_are_the_published_method() -> None:
    s = Settings()
    assert (s.train.image_size, s.train.epochs, s.train.batch_size, s.train.lr, s.train.weight_decay) == (
        512, 20, 20, 1e-4, 1e-4)
    assert (s.train.step_size, s.train.gamma, s.train.loss, s.train.precision) == (10, 0.5, "asl", "fp32")
    assert (s.train.gamma_neg, s.train.gamma_pos, s.train.clip) == (4.0, 1.0, 0.05)
    assert (s.refine.batch_size, s.refine.lr) == (12, 1e-6)
    assert s.split.val_fraction == pytest.approx(135 / 1535)
    assert s.score.context == 5
    # The method's head is kept for what it was designed for, pretrained weights; from scratch a linear head.
    assert s.model.head == "auto" and s.model.resolved_head() == "linear"
    assert load_settings_from_text("model: {pretrained: w.pt}").model.resolved_head() == "method"


def load_settings_from_text(text: str) -> Settings:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_settings(_write(Path(tmp), text))


def test_missing_default_file_means_method_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings() == Settings()
    with pytest.raises(UserError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_file_values_are_typed(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "train: {epochs: 3, lr: 1}\nvalidate: {image_size: null}\n"))
    assert s.train.epochs == 3 and s.train.lr == 1.0 and isinstance(s.train.lr, float)
    assert s.validate.image_size is None and s.train.batch_size == 20


@pytest.mark.parametrize("text, message", [
    ("train: {epoch: 3}", "params.yaml: unknown key 'train.epoch'; did you mean 'epochs'?"),
    ("trian: {epochs: 3}", "unknown section 'trian'; did you mean 'train'?"),
    ("train: {epochs: ten}", "train.epochs must be an integer, got 'ten'"),
    ("train: {epochs: true}", "train.epochs must be an integer, got True"),
    ("train: {loss: focal}", "train.loss must be one of 'asl', 'bce', got 'focal'"),
    ("train: {cache_images: 1}", "train.cache_images must be true/false, got 1"),
    ("split: {seed: 0}", "split.seed is no longer a setting: it was replaced by split.salt"),
    ("split: {val_fraction: 0.6, gate_fraction: 0.5}", "must each be in (0, 1) and leave patients for training"),
    ("train: 3", "section 'train' must be a mapping"),
    ("train: {epochs: 0}", "train.epochs must be at least 1"),
    ("- a\n- b", "must hold a mapping of sections"),
    ("train: {epochs: [1", "is not valid YAML"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        load_settings(_write(tmp_path, text))
    assert message in str(caught.value)
    assert "params.yaml" in str(caught.value)


def test_set_and_flags_override_in_order(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "train: {epochs: 3}\n"))
    s = s.with_sets(["train.epochs=5", "train.precision=bf16", "validate.image_size=null"])
    assert s.train.epochs == 5 and s.train.precision == "bf16" and s.validate.image_size is None
    assert s.override("train", epochs=7, lr=None).train.epochs == 7  # None = flag not given
    with pytest.raises(UserError, match="use section.key=value"):
        s.with_sets(["epochs=5"])
    with pytest.raises(UserError, match="unknown key 'train.epoch'"):
        s.with_sets(["train.epoch=5"])
    with pytest.raises(UserError, match="--set: train.epochs must be an integer"):
        s.with_sets(["train.epochs=many"])
    with pytest.raises(UserError, match="command line: score.context must be one of 1, 5"):
        s.override("score", context=3)


def test_hash_follows_values_not_formatting(tmp_path: Path) -> None:
    a = load_settings(_write(tmp_path, "train: {epochs: 3}\n"))
    b = load_settings(_write(tmp_path, "# comment\ntrain:\n  epochs: 3\n  lr: 0.0001\n"))
    assert a.hash() == b.hash() != Settings().hash()


def test_cli_rejects_wrong_types_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from hemo_pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["split", "--set", "split.gate_fraction=lots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --set: split.gate_fraction must be a number, got 'lots'"


def test_a_number_in_exponent_form_reads_as_a_number(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML, DVC's -S) reads `1e-4` as text; users write it so, in the file and on the command line."""
    from hemo_pipeline.services.settings import load_settings

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  lr: 1e-4\n")
    settings = load_settings(params).with_sets(["refine.lr=1E-7"])
    assert settings.train.lr == 1e-4 and settings.refine.lr == 1e-7
    with pytest.raises(UserError, match="refine.lr must be a number, got 'fast'"):
        settings.with_sets(["refine.lr=fast"])


def test_the_sampling_setting_offers_exactly_the_library_s_rules() -> None:
    """TrainSettings needs a Literal for its typed check; it must stay the library's list."""
    from typing import get_args, get_type_hints

    from hemo_model.training.sampling import SAMPLING_RULES
    from hemo_pipeline.services.settings import TrainSettings

    assert set(get_args(get_type_hints(TrainSettings)["sampling"])) == set(SAMPLING_RULES)
