"""What the model steps (train, refine, evaluate, gate, score) share: settings arguments, the
patient roles, the device, the validation scorer and the learning-curve outputs.

Kept in one place so that every step sees the same patients in the same role for the same
settings, which is what makes the gate's challenger-vs-champion comparison fair.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.files import write_csv_atomic, write_json_atomic
from components.settings import (
    ModelSettings,
    SelectionSettings,
    Settings,
    SplitSettings,
    TrainSettings,
    load_settings,
)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, help="params file (default: ./params.yaml if present)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                        help="override one setting of the params file, e.g. --set train.epochs=3 (repeatable)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data folder in DLCV layout (params data.root)")
    add_settings_arguments(parser)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (auto: cuda when available)")


def settings_from(args: argparse.Namespace) -> Settings:
    """params.yaml (or --params) with the --set overrides applied; steps then apply their flags.
    Also sets the slice pixel budget (data.max_image_size) for every image this process reads."""
    from hemo_model import images

    settings = load_settings(args.params).with_sets(getattr(args, "set", None))
    images.configure(settings.data.max_image_size)
    return settings


def loss_from(train: TrainSettings) -> Any:
    """The training loss of the `train` settings (refinement uses the same one)."""
    from hemo_model.losses import build_loss

    if train.loss == "asl":
        return build_loss("asl", train.reduction, gamma_neg=train.gamma_neg, gamma_pos=train.gamma_pos,
                          clip=train.clip)
    return build_loss(train.loss, train.reduction)


def resolve_device(choice: str) -> Any:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def join_cluster(device_choice: str) -> tuple[Any, Any]:
    """(cluster, device) of this process: under torchrun one process per GPU joins the process
    group (rank 0 logs and saves); alone, a cluster of one. A bad HEMO_DIST_TIMEOUT_S is a user error."""
    from hemo_model import distributed

    cluster = distributed.from_environment()
    device = distributed.local_device(cluster, resolve_device(device_choice))
    try:
        distributed.init(cluster, device)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return cluster, device


def data_root(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.data) if getattr(args, "data", None) else Path(settings.data.root)


def role_spec(split: SplitSettings) -> Any:
    from hemo_model.roles import RoleSpec

    return RoleSpec(salt=split.salt, val_fraction=split.val_fraction, gate_fraction=split.gate_fraction)


def load_roles(root: Path, split: SplitSettings, need: tuple[str, ...] = ("train", "val", "gate")) -> dict[str, list]:
    """Labelled patients of ``root`` by role; a role this step needs must not be empty."""
    from hemo_model.data import DataError, load_split, patients_by_role

    try:
        patients = load_split(root, "train")
    except DataError as exc:
        raise UserError(str(exc)) from exc
    roles = patients_by_role(patients, role_spec(split))
    for role in need:
        if not roles[role]:
            fix = ("lower split.val_fraction + split.gate_fraction" if role == "train"
                   else f"raise split.{role}_fraction")
            raise UserError(f"no patient of the {len(patients)} in {root / 'train.csv'} falls in role '{role}' "
                            f"(salt {split.salt!r}); add patients or {fix} in params.yaml "
                            "(`hemo split` shows the assignment)")
    return roles


def provenance(roles: dict[str, list], split: SplitSettings, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model trained on the ``train`` role has seen: the split and the patient list (with
    ``earlier``'s patients when it continues another model, e.g. refinement)."""
    from hemo_model.roles import patients_digest

    seen = {p.dirname for p in roles["train"]} | set((earlier or {}).get("train_patients", []))
    return {"split": asdict(split), "train_patients": sorted(seen), "train_patients_sha256": patients_digest(seen)}


def selection_rule(selection: SelectionSettings, val_patients: list) -> tuple[str, str]:
    """The rule this run uses and why (logged to MLflow and the step's JSON report)."""
    if selection.rule != "auto":
        return selection.rule, f"selection.rule: {selection.rule}"
    import numpy as np

    from hemo_model import CLASSES

    positives = np.sum([p.labels.sum(axis=0) for p in val_patients], axis=0) if val_patients else np.zeros(5)
    short = [f"{c} {int(n)}" for c, n in zip(CLASSES, positives) if n < selection.min_val_positives]
    if len(val_patients) >= selection.min_val_patients and not short:
        return "best", (f"val role: {len(val_patients)} patients >= {selection.min_val_patients} and every class has "
                        f">= {selection.min_val_positives} positive slices")
    why = [f"{len(val_patients)} patients < {selection.min_val_patients}"] if len(val_patients) < selection.min_val_patients else []
    if short:
        why.append(f"positive slices below {selection.min_val_positives}: {', '.join(short)}")
    return "last", "val role too small to choose on (" + "; ".join(why) + ")"


def model_spec(model: ModelSettings, image_size: int) -> Any:
    """The spec of a network trained with these settings (stage 1: the 5-tap filter; refinement
    records a learned context; evaluate adds the tuned thresholds)."""
    from hemo_model.spec import ModelSpec

    return ModelSpec(head=model.resolved_head(), dropout=model.dropout, image_size=image_size, input=model.input)


def pretrained_path(model: ModelSettings) -> Path | None:
    if not model.pretrained:
        return None
    path = Path(model.pretrained)
    if not path.is_file():
        raise UserError(f"model.pretrained weights file {path} does not exist; give a local torchvision "
                        "resnet34 state_dict or set model.pretrained: null to train from scratch")
    return path


def read_checkpoint(path: Path, produced_by: str) -> tuple[Any, Any, dict[str, Any]]:
    """A checkpoint of ``hemo train``/``refine`` or one clear error naming the file."""
    from hemo_model.model import load_checkpoint

    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; run `{produced_by}` first or pass another path")
    try:
        return load_checkpoint(path)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}); re-run `{produced_by}`") from exc


def slice_cache(settings: Settings, patients: list, image_size: int, channels: int) -> Any:
    """The decoded-slice cache of ``patients`` (built now, before any loader worker starts), or
    False when train.cache_images is off."""
    if not settings.train.cache_images:
        return False
    from hemo_model.data import SliceCache

    folder = Path(settings.data.cache_dir) if settings.data.cache_dir else None
    return SliceCache.build([path for p in patients for path in p.paths], image_size, channels, folder, progress=True)


def validator(patients: list, image_size: int, weights: tuple[float, ...], device: Any, precision: str,
              settings: Settings, channels: int = 1, batch_size: int = 32) -> Any:
    """``validate(model) -> micro-F2`` on the validation patients at threshold 0.5. The slices are
    decoded once for the whole run (cached when train.cache_images), not once per epoch."""
    import torch

    from hemo_model.inference import score_sequences, stack_scores
    from hemo_model.metrics import micro_f2

    cache = slice_cache(settings, patients, image_size, channels)
    workers = settings.data.loader_workers(device.type)

    def validate(model: Any) -> float:
        slice_model = getattr(model, "slice_model", model)
        was_training = slice_model.training
        slice_model.eval()
        with torch.no_grad():
            scores = score_sequences(slice_model, patients, image_size, weights, device, precision, batch_size,
                                     workers=workers, cache=cache, channels=channels)
        slice_model.train(was_training)
        probs, labels = stack_scores(scores)
        return micro_f2(labels, probs)

    return validate


def write_history(history: list[Any], csv_path: Path) -> None:
    """Epoch history as CSV (for `dvc plots`)."""
    rows = [asdict(h) for h in history]
    header = list(rows[0]) if rows else ["epoch"]
    write_csv_atomic(csv_path, header, ([row[k] for k in header] for row in rows))


def learning_curve_figure(history: list[Any], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(epochs, [h.train_loss for h in history], "o-", color="tab:blue", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss", color="tab:blue")
    right = left.twinx()
    right.plot(epochs, [h.val_micro_f2 for h in history], "s-", color="tab:red", label="val micro-F2")
    right.set_ylabel("validation micro-F2", color="tab:red")
    right.set_ylim(0, 1)
    left.set_title(title)
    fig.tight_layout()
    return fig


def epoch_logger(rate_name: str) -> Any:
    """on_epoch callback: the epoch's loss, validation micro-F2, lr and throughput to MLflow."""
    import mlflow

    def log(record: Any) -> None:
        mlflow.log_metrics({"train_loss": record.train_loss, "val_micro_f2": record.val_micro_f2, "lr": record.lr,
                            rate_name: record.samples_per_s}, step=record.epoch)

    return log


def publish_fit(stage: str, history: list[Any], summary: dict[str, Any], reports: Path, title: str) -> None:
    """A finished fit's summary to MLflow and reports/<stage>.json, its history to
    reports/<stage>_history.csv (dvc plots) and its learning curve to MLflow."""
    import mlflow

    from components import tracking

    mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    write_history(history, reports / f"{stage}_history.csv")
    write_json_atomic(reports / f"{stage}.json", summary)
    tracking.log_figure(learning_curve_figure(history, title), f"{stage}_curve.png")


# --- resume --------------------------------------------------------------------------------

RESUME_MODES = ("auto", "always", "never")


def add_resume_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", nargs="?", const="always", default="auto", choices=RESUME_MODES,
                        help="auto (default): continue --out/last.pt when it was made with the same settings, data "
                             "and code, else start fresh if that run had finished; always (bare --resume): must "
                             "continue; never: start over")


def code_digest() -> str:
    """Digest of the code that shapes training: the ML library and the training steps."""
    import hashlib

    import hemo_model

    files = sorted(Path(hemo_model.__file__).parent.glob("*.py"))
    here = Path(__file__).parent
    files += [here / name for name in ("train.py", "refine.py", "model_steps.py", "settings.py")]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def data_digest(patients: list) -> str:
    """Digest of what a fit reads: patient folders, slice file names and labels (not pixels)."""
    import hashlib

    digest = hashlib.sha256()
    for p in sorted(patients, key=lambda q: q.dirname):
        digest.update(p.dirname.encode() + b"\0" + "\0".join(p.slice_ids).encode())
        if p.labels is not None:
            digest.update(p.labels.tobytes())
    return digest.hexdigest()[:16]


def fingerprint(settings: Settings, roles: dict[str, list], stage: str, init: Path | None = None) -> dict[str, Any]:
    """What must be equal for a checkpoint to be continued: settings that shape training (not
    epochs, workers or caching), the train and val patients and labels, the code, and for
    refinement the stage-1 checkpoint it starts from."""
    import hashlib

    from components.settings import digest

    values = settings.to_dict()
    parts: dict[str, Any] = {
        "train": {k: v for k, v in values["train"].items() if k not in ("epochs", "workers", "cache_images")},
        "model": values["model"], "split": values["split"], "selection": values["selection"],
        "data": data_digest(roles["train"] + roles["val"]), "code": code_digest(),
    }
    if stage == "refine":
        parts["refine"] = {k: v for k, v in values["refine"].items() if k not in ("epochs", "head_epochs")}
        parts["init"] = hashlib.sha256(init.read_bytes()).hexdigest()[:16] if init is not None else None
    hashed = {name: digest(value) for name, value in parts.items()}
    return {"digest": digest(hashed), "parts": hashed}


def resume_decision(mode: str, out: Path, current: dict[str, Any], produced_by: str) -> bool:
    """Whether to continue ``out/last.pt`` (see --resume). A checkpoint of an unfinished run made
    with other settings, data or code is never silently thrown away."""
    import torch

    last = out / "last.pt"
    if mode == "never":
        return False
    if not last.is_file():
        if mode == "always":
            raise UserError(f"--resume given but {last} does not exist; run without --resume")
        return False
    try:
        payload = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # an interrupted write is replaced atomically, so this is foreign/corrupt
        raise UserError(f"{last} cannot be read ({type(exc).__name__}); delete it or pass --resume never") from exc
    recorded = payload.get("fingerprint") or {}
    if recorded.get("digest") == current["digest"]:
        return True
    changed = sorted(k for k in current["parts"] if (recorded.get("parts") or {}).get(k) != current["parts"][k])
    finished = int(payload.get("epoch", 0)) >= int(payload.get("target_epochs", 10**9))
    what = ", ".join(changed) or "unknown (a checkpoint of an older release)"
    if finished and mode == "auto":
        print(f"{produced_by}: {last} is a finished run with other {what}; starting fresh")
        return False
    raise UserError(f"{last} is an {'unfinished' if not finished else 'earlier'} run made with other {what} than now; "
                    f"resume it with the same settings, data and code, or pass --resume never to start over")
