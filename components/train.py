"""Stage 1: train ResNet34 on single slices (ASL, Adam, StepLR), keep the best epoch.

Reads params `train`, `model`, `split`; flags override. Checkpoints every epoch to --out
(last.pt with optimizer/scheduler/RNG state, best.pt by validation micro-F2); --resume continues
an interrupted run. Starts the pipeline's parent MLflow run and logs params, per-epoch metrics,
the learning curve and the best checkpoint. Writes reports/train.json and
reports/train_history.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components.errors import UserError
from components.model_steps import (
    METHOD_TRAIN,
    add_common_arguments,
    data_root,
    epoch_logger,
    load_train_val,
    loss_from,
    merged,
    model_config,
    pretrained_path,
    publish_fit,
    resolve_device,
    validator,
)
from components.params import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("outputs/train"), help="checkpoint folder")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="metrics/curves folder")
    parser.add_argument("--epochs", type=int, help="params train.epochs (method: 20)")
    parser.add_argument("--image-size", type=int, help="params train.image_size (method: 512)")
    parser.add_argument("--batch-size", type=int, help="params train.batch_size (method: 20)")
    parser.add_argument("--lr", type=float, help="params train.lr (method: 1e-4)")
    parser.add_argument("--loss", choices=["asl", "bce"], help="params train.loss (method: asl)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="params train.precision")
    parser.add_argument("--max-steps", type=int, help="cap optimizer steps per epoch (smoke runs)")
    parser.add_argument("--seed", type=int, help="params train.seed")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")


def run(args: argparse.Namespace) -> int:
    import mlflow

    from components import tracking
    from hemo_model.data import SliceDataset
    from hemo_model.model import build_model
    from hemo_model.training import FitConfig, fit, seed_everything
    from hemo_model.transforms import train_augmentation

    params = load_params(args.params)
    cfg = merged(params, "train", METHOD_TRAIN, {
        "epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size, "lr": args.lr,
        "loss": args.loss, "precision": args.precision, "max_steps": args.max_steps, "seed": args.seed,
    })
    if int(cfg["epochs"]) < 1:
        raise UserError("train.epochs must be at least 1")
    device = resolve_device(args.device)
    root = data_root(args, params)
    train_patients, val_patients = load_train_val(root, params)
    if args.resume and not (args.out / "last.pt").is_file():
        raise UserError(f"--resume given but {args.out / 'last.pt'} does not exist; run without --resume")
    image_size = int(cfg["image_size"])
    config = model_config(params, image_size)
    seed_everything(int(cfg["seed"]))  # the initial weights too: same seed, same model
    model = build_model(config, pretrained_path(params))
    loss = loss_from(cfg)
    dataset = SliceDataset(train_patients, image_size, cache=bool(cfg["cache_images"]), transform=train_augmentation())
    fit_config = FitConfig(
        epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]), lr=float(cfg["lr"]),
        weight_decay=float(cfg["weight_decay"]), step_size=int(cfg["step_size"]), gamma=float(cfg["gamma"]),
        precision=str(cfg["precision"]), seed=int(cfg["seed"]), workers=int(cfg["workers"]),
        max_steps=cfg["max_steps"],
    )
    validate = validator(val_patients, image_size, (1.0,), device, fit_config.precision, bool(cfg["cache_images"]))

    tracking.configure()
    tracking.start_pipeline_run(params)
    with tracking.step_run("train", params):
        tracking.log_params_flat({"train": cfg, "model": params.get("model", {}), "split": params.get("split", {})})
        mlflow.log_params({"n_train_patients": len(train_patients), "n_val_patients": len(val_patients),
                           "n_train_slices": len(dataset), "device": str(device)})
        started = time.perf_counter()
        result = fit(
            model, dataset, validate, loss, fit_config, args.out, config, resume=args.resume, device=device,
            on_epoch=epoch_logger("train_samples_per_s"),
        )
        seconds = time.perf_counter() - started
        summary = {
            "best_epoch": result.best_epoch, "best_val_micro_f2_single": result.best_val_micro_f2,
            "epochs": len(result.history), "seconds": round(seconds, 1),
            "train_samples_per_s": round(sum(h.samples_per_s for h in result.history) / len(result.history), 2),
        }
        publish_fit("train", result.history, summary, args.reports, "stage 1: single-slice training")
        mlflow.log_artifact(str(args.out / "best.pt"), artifact_path="checkpoints")
    print(f"train: best epoch {result.best_epoch}, val micro-F2 (single slice) {result.best_val_micro_f2:.4f}, "
          f"{seconds:.0f} s -> {args.out / 'best.pt'}")
    return 0
