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
from pathlib import Path

from components.errors import UserError
from components.model_steps import (
    add_common_arguments,
    data_root,
    epoch_logger,
    load_roles,
    loss_from,
    model_config,
    pretrained_path,
    provenance,
    publish_fit,
    resolve_device,
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
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")


def run(args: argparse.Namespace) -> int:
    import mlflow

    from components import tracking
    from components.split import write_split_report
    from hemo_model.data import SliceDataset
    from hemo_model.model import build_model
    from hemo_model.training import FitConfig, fit, seed_everything
    from hemo_model.transforms import train_augmentation

    settings = settings_from(args).override(
        "train", epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
        loss=args.loss, precision=args.precision, max_steps=args.max_steps, seed=args.seed)
    cfg = settings.train
    device = resolve_device(args.device)
    root = data_root(args, settings)
    roles = load_roles(root, settings.split, need=("train", "val"))
    if args.resume and not (args.out / "last.pt").is_file():
        raise UserError(f"--resume given but {args.out / 'last.pt'} does not exist; run without --resume")
    config = model_config(settings.model, cfg.image_size)
    seed_everything(cfg.seed)  # the initial weights too: same seed, same model
    model = build_model(config, pretrained_path(settings.model))
    dataset = SliceDataset(roles["train"], cfg.image_size, cache=cfg.cache_images, transform=train_augmentation())
    fit_config = FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        step_size=cfg.step_size, gamma=cfg.gamma, precision=cfg.precision, seed=cfg.seed, workers=cfg.workers,
        max_steps=cfg.max_steps,
    )
    validate = validator(roles["val"], cfg.image_size, (1.0,), device, cfg.precision, cfg.cache_images)
    seen = provenance(roles, settings.split)
    write_split_report(args.reports / "split.json", roles, settings.split)

    tracking.configure()
    tracking.start_pipeline_run(settings)
    with tracking.step_run("train", settings):
        tracking.log_params_flat({"train": settings.to_dict()["train"], "model": settings.to_dict()["model"],
                                  "split": settings.to_dict()["split"]})
        mlflow.log_params({"n_train_patients": len(roles["train"]), "n_val_patients": len(roles["val"]),
                           "n_train_slices": len(dataset), "device": str(device),
                           "train_patients_sha256": seen["train_patients_sha256"]})
        mlflow.log_artifact(str(args.reports / "split.json"), artifact_path="provenance")
        started = time.perf_counter()
        result = fit(
            model, dataset, validate, loss_from(cfg), fit_config, args.out, config, resume=args.resume,
            device=device, on_epoch=epoch_logger("train_samples_per_s"), checkpoint_extra={"provenance": seen},
        )
        seconds = time.perf_counter() - started
        summary = {
            "best_epoch": result.best_epoch, "best_val_micro_f2_single": result.best_val_micro_f2,
            "epochs": len(result.history), "seconds": round(seconds, 1),
            "train_samples_per_s": round(sum(h.samples_per_s for h in result.history) / len(result.history), 2),
            "train_patients": len(roles["train"]), "val_patients": len(roles["val"]),
        }
        publish_fit("train", result.history, summary, args.reports, "stage 1: single-slice training")
        mlflow.log_artifact(str(args.out / "best.pt"), artifact_path="checkpoints")
    print(f"train: best epoch {result.best_epoch}, val micro-F2 (single slice) {result.best_val_micro_f2:.4f}, "
          f"{seconds:.0f} s -> {args.out / 'best.pt'}")
    return 0
