"""Stage 1: train ResNet34 on single slices (ASL, Adam, StepLR) of the `train` role.

Reads settings `train`, `model`, `split`; flags override. Patients are assigned to roles by a
salted hash (`hemo split`): the `train` role is trained on, the `val` role chooses the epoch, the
`gate` role is never seen. The assignment is written to reports/split.json and the training
patients travel with every checkpoint (provenance for the gate). Checkpoints every epoch to --out
(last.pt with optimizer/scheduler/RNG state, best.pt by validation micro-F2); --resume continues an
interrupted run. Starts the pipeline's parent MLflow run and logs params, per-epoch metrics, the
learning curve and the best checkpoint. Writes reports/train.json and reports/train_history.csv.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.model_steps import (
    add_common_arguments,
    add_resume_argument,
    data_root,
    epoch_logger,
    load_roles,
    loss_from,
    model_spec,
    pretrained_path,
    provenance,
    fingerprint,
    publish_fit,
    join_cluster,
    resume_decision,
    selection_rule,
    slice_cache,
    settings_from,
    validator,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("outputs/train"), help="checkpoint folder")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="metrics/curves folder")
    parser.add_argument("--epochs", type=int, help="train.epochs (method: 20)")
    parser.add_argument("--image-size", type=int, help="train.image_size (method: 512)")
    parser.add_argument("--batch-size", type=int, help="train.batch_size (method: 20)")
    parser.add_argument("--lr", type=float, help="train.lr (method: 1e-4)")
    parser.add_argument("--loss", choices=["asl", "bce"], help="train.loss (method: asl)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="train.precision")
    parser.add_argument("--max-steps", type=int, help="cap optimizer steps per epoch (smoke runs)")
    parser.add_argument("--seed", type=int, help="train.seed")
    add_resume_argument(parser)


@dataclass
class Stage1:
    """What a finished stage-1 fit hands on."""

    result: Any  # hemo_model.training.FitResult
    summary: dict[str, Any]
    provenance: dict[str, Any]


def train_stage1(settings: Any, roles: dict[str, list], out: Path, device: Any, resume: bool = False,
                 run_fingerprint: dict[str, Any] | None = None, cluster: Any = None) -> Stage1:
    """Stage 1 as `hemo train` runs it, inside an active MLflow run (params and per-epoch metrics
    go there): the one implementation, also used by `hemo ablate`. Under torchrun every rank calls
    it; only rank 0 (``cluster.is_main``) logs."""
    import mlflow

    from hemo_model.data import SliceDataset
    from hemo_model.distributed import SINGLE
    from hemo_model.model import build_model
    from hemo_model.training import FitConfig, fit, seed_everything

    cluster = cluster or SINGLE
    cfg = settings.train
    config = model_spec(settings.model, cfg.image_size)
    seed_everything(cfg.seed)  # the initial weights too: same seed, same model
    model = build_model(config, pretrained_path(settings.model))
    channels = config.channels
    dataset = SliceDataset(roles["train"], cfg.image_size, channels=channels,
                           cache=slice_cache(settings, roles["train"], cfg.image_size, channels))
    rule, rule_reason = selection_rule(settings.selection, roles["val"])
    fit_config = FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        step_size=cfg.step_size, gamma=cfg.gamma, precision=cfg.precision, seed=cfg.seed,
        workers=settings.data.loader_workers(device.type),
        max_steps=cfg.max_steps, selection=rule, ema_alpha=settings.selection.ema_alpha,
    )
    validate = validator(roles["val"], cfg.image_size, (1.0,), device, cfg.precision, settings, channels,
                         settings.evaluate.batch_size)
    seen = provenance(roles, settings.split)
    if cluster.is_main:
        from components import tracking

        tracking_params = settings.to_dict()
        tracking.log_params_flat({k: tracking_params[k] for k in ("train", "model", "split", "selection")})
        mlflow.log_params({"n_train_patients": len(roles["train"]), "n_val_patients": len(roles["val"]),
                           "n_train_slices": len(dataset), "device": str(device), "processes": cluster.world_size,
                           "train_patients_sha256": seen["train_patients_sha256"], "selection_rule": rule})
        mlflow.set_tag("hemo.selection", rule_reason)
    started = time.perf_counter()
    result = fit(
        model, dataset, validate, loss_from(cfg), fit_config, out, config, resume=resume,
        device=device, on_epoch=epoch_logger("train_samples_per_s") if cluster.is_main else None,
        checkpoint_extra={"provenance": seen, "fingerprint": run_fingerprint or fingerprint(settings, roles, "train"),
                          "target_epochs": cfg.epochs},
        cluster=cluster,
    )
    seconds = time.perf_counter() - started
    summary = {
        "best_epoch": result.best_epoch, "best_val_micro_f2_single": result.best_val_micro_f2,
        "epochs": len(result.history), "seconds": round(seconds, 1),
        "train_samples_per_s": round(sum(h.samples_per_s for h in result.history) / max(len(result.history), 1), 2),
        "train_patients": len(roles["train"]), "val_patients": len(roles["val"]),
        "selection": rule, "selection_reason": rule_reason,
    }
    return Stage1(result, summary, seen)


def run(args: argparse.Namespace) -> int:
    import mlflow

    from components import tracking
    from components.split import write_split_report

    settings = settings_from(args).override(
        "train", epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
        loss=args.loss, precision=args.precision, max_steps=args.max_steps, seed=args.seed)
    cluster, device = join_cluster(args.device)  # torchrun: one process per GPU; rank 0 logs and saves
    roles = load_roles(data_root(args, settings), settings.split, need=("train", "val"))
    pretrained_path(settings.model)  # a missing weights file fails before anything starts
    current = fingerprint(settings, roles, "train")
    resume = resume_decision(args.resume, args.out, current, "train")
    if not cluster.is_main:
        train_stage1(settings, roles, args.out, device, resume=resume, run_fingerprint=current, cluster=cluster)
        return 0
    write_split_report(args.reports / "split.json", roles, settings.split)

    tracking.configure()
    tracking.start_pipeline_run(settings, resume=resume)
    with tracking.step_run("train", settings, resume=resume):
        mlflow.log_artifact(str(args.reports / "split.json"), artifact_path="provenance")
        stage = train_stage1(settings, roles, args.out, device, resume=resume, run_fingerprint=current,
                             cluster=cluster)
        publish_fit("train", stage.result.history, stage.summary, args.reports, "stage 1: single-slice training")
        mlflow.log_artifact(str(args.out / "best.pt"), artifact_path="checkpoints")
    summary = stage.summary
    print(f"train: kept epoch {summary['best_epoch']} (selection '{summary['selection']}': "
          f"{summary['selection_reason']}), val micro-F2 (single slice) {summary['best_val_micro_f2_single']:.4f}, "
          f"{summary['seconds']:.0f} s -> {args.out / 'best.pt'}")
    return 0
