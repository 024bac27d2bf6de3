"""Stage 2: refine the stage-1 model with 5-slice context (loss on the weighted logit sum).

For a centre slice k the model scores k-2..k+2 separately; the loss is taken on
0.1 z(k-2) + 0.3 z(k-1) + 0.5 z(k) + 0.3 z(k+1) + 0.1 z(k+2). Adam at lr 1e-6, batch 12
(params `refine`), same loss as stage 1. The best epoch by validation micro-F2 *with context*
is kept; checkpoints hold the per-slice network, so they load like stage-1 checkpoints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components.model_steps import (
    add_common_arguments,
    data_root,
    epoch_logger,
    load_roles,
    loss_from,
    provenance,
    publish_fit,
    read_checkpoint,
    resolve_device,
    settings_from,
    validator,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--init", type=Path, default=Path("outputs/train/best.pt"), help="stage-1 checkpoint")
    parser.add_argument("--out", type=Path, default=Path("outputs/refine"), help="checkpoint folder")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="metrics/curves folder")
    parser.add_argument("--epochs", type=int, help="refine.epochs")
    parser.add_argument("--lr", type=float, help="refine.lr (method: 1e-6)")
    parser.add_argument("--batch-size", type=int, help="refine.batch_size (method: 12)")
    parser.add_argument("--max-steps", type=int, help="cap optimizer steps per epoch (smoke runs)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")


def run(args: argparse.Namespace) -> int:
    import mlflow

    from components import tracking
    from hemo_model.data import WindowDataset
    from hemo_model.model import ContextModel, save_checkpoint
    from hemo_model.training import FitConfig, fit
    from hemo_model.transforms import train_augmentation

    settings = settings_from(args).override(
        "refine", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_steps=args.max_steps)
    train_cfg, cfg = settings.train, settings.refine
    slice_model, config, payload = read_checkpoint(args.init, "hemo train")
    device = resolve_device(args.device)
    roles = load_roles(data_root(args, settings), settings.split, need=("train", "val"))
    seen = provenance(roles, settings.split, earlier=payload.get("provenance"))
    image_size = config.image_size
    model = ContextModel(slice_model, config.context_weights)
    cache = train_cfg.cache_images
    dataset = WindowDataset(roles["train"], image_size, cache=cache, transform=train_augmentation())
    fit_config = FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=train_cfg.weight_decay,
        step_size=train_cfg.step_size, gamma=train_cfg.gamma, precision=train_cfg.precision, seed=train_cfg.seed,
        workers=train_cfg.workers, max_steps=cfg.max_steps,
    )
    validate = validator(roles["val"], image_size, tuple(config.context_weights), device, fit_config.precision, cache)

    with tracking.step_run("refine", settings):
        tracking.log_params_flat({"refine": settings.to_dict()["refine"], "init": str(args.init)})
        start_f2 = validate(model)
        mlflow.log_metric("val_micro_f2_context_before", start_f2)
        initial_state = {k: v.detach().clone() for k, v in slice_model.state_dict().items()}
        started = time.perf_counter()
        result = fit(
            model, dataset, validate, loss_from(train_cfg), fit_config, args.out, config, save_model=slice_model,
            resume=args.resume, device=device, on_epoch=epoch_logger("train_windows_per_s"),
            checkpoint_extra={"provenance": seen},
        )
        seconds = time.perf_counter() - started
        if result.best_val_micro_f2 < start_f2:
            # Refinement made validation worse: keep the stage-1 weights as the best model (epoch 0).
            slice_model.load_state_dict(initial_state)
            save_checkpoint(args.out / "best.pt", slice_model, config, epoch=0, val_micro_f2=start_f2,
                            provenance=seen)
            result.best_epoch, result.best_val_micro_f2 = 0, start_f2
        summary = {"best_epoch": result.best_epoch, "best_val_micro_f2_context": result.best_val_micro_f2,
                   "val_micro_f2_context_before": start_f2, "seconds": round(seconds, 1)}
        publish_fit("refine", result.history, summary, args.reports, "stage 2: 5-slice refinement")
    print(f"refine: val micro-F2 (5-slice context) {start_f2:.4f} -> {result.best_val_micro_f2:.4f} "
          f"(epoch {result.best_epoch}), {seconds:.0f} s -> {args.out / 'best.pt'}")
    return 0
