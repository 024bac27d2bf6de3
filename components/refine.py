"""Stage 2: refine the stage-1 model with 5-slice context (loss on the weighted logit sum).

For a centre slice k the model scores k-2..k+2 separately; the loss is taken on
0.1 z(k-2) + 0.3 z(k-1) + 0.5 z(k) + 0.3 z(k+1) + 0.1 z(k+2). Adam at lr 1e-6, batch 12
(settings `refine`), same loss as stage 1. The epoch that moves on follows `selection` (validation
micro-F2 *with context* on the `val` role when it is big enough, else the last epoch); when the val
role can tell and refinement made it worse, the stage-1 weights are kept instead. Checkpoints hold
the per-slice network, so they load like stage-1 checkpoints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.model_steps import (
    add_common_arguments,
    add_resume_argument,
    data_root,
    epoch_logger,
    fingerprint,
    load_roles,
    loss_from,
    provenance,
    publish_fit,
    read_checkpoint,
    join_cluster,
    resume_decision,
    selection_rule,
    slice_cache,
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
    add_resume_argument(parser)


def refine_filter(settings: Any, slice_model: Any, config: Any, roles: dict, seen: dict, out: Path, device: Any,
                  resume: bool = False, run_fingerprint: dict | None = None, cluster: Any = None) -> tuple[list, dict]:
    """The method's refinement with the fixed 5-tap filter, inside an active MLflow run.
    Returns the history and the summary; best.pt in ``out`` is the model that moves on."""
    import mlflow

    from hemo_model.data import WindowDataset
    from hemo_model.distributed import SINGLE
    from hemo_model.model import ContextModel, save_checkpoint
    from hemo_model.training import FitConfig, fit

    cluster = cluster or SINGLE

    train_cfg, cfg = settings.train, settings.refine
    model = ContextModel(slice_model, config.context_weights)
    dataset = WindowDataset(roles["train"], config.image_size, channels=config.channels,
                            cache=slice_cache(settings, roles["train"], config.image_size, config.channels))
    rule, rule_reason = selection_rule(settings.selection, roles["val"])
    fit_config = FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=train_cfg.weight_decay,
        step_size=train_cfg.step_size, gamma=train_cfg.gamma, precision=train_cfg.precision, seed=train_cfg.seed,
        workers=settings.data.loader_workers(device.type), max_steps=cfg.max_steps, selection=rule,
        ema_alpha=settings.selection.ema_alpha,
    )
    validate = validator(roles["val"], config.image_size, tuple(config.context_weights), device, train_cfg.precision,
                         settings, config.channels, settings.evaluate.batch_size)
    start_f2 = 0.0
    if cluster.is_main:
        from components import tracking

        tracking.log_params_flat({"refine": settings.to_dict()["refine"], "context": "filter", "selection_rule": rule})
        mlflow.set_tag("hemo.selection", rule_reason)
        start_f2 = validate(model)
        mlflow.log_metric("val_micro_f2_context_before", start_f2)
    initial_state = {k: v.detach().clone() for k, v in slice_model.state_dict().items()}
    started = time.perf_counter()
    result = fit(
        model, dataset, validate, loss_from(train_cfg), fit_config, out, config, save_model=slice_model,
        resume=resume, device=device, on_epoch=epoch_logger("train_windows_per_s") if cluster.is_main else None,
        checkpoint_extra={"provenance": seen, "fingerprint": run_fingerprint or {}, "target_epochs": cfg.epochs},
        cluster=cluster,
    )
    if not cluster.is_main:
        return result.history, {}
    if rule != "last" and result.best_val_micro_f2 < start_f2:
        # Refinement made validation worse (on a val role that can tell): keep the stage-1 weights.
        slice_model.load_state_dict(initial_state)
        save_checkpoint(out / "best.pt", slice_model, config, epoch=0, val_micro_f2=start_f2, provenance=seen)
        result.best_epoch, result.best_val_micro_f2 = 0, start_f2
    summary = {"best_epoch": result.best_epoch, "best_val_micro_f2_context": result.best_val_micro_f2,
               "val_micro_f2_context_before": start_f2, "seconds": round(time.perf_counter() - started, 1),
               "context": "filter", "selection": rule, "selection_reason": rule_reason,
               "kept_refinement": result.best_epoch > 0}
    return result.history, summary


def refine_learned(settings: Any, slice_model: Any, config: Any, roles: dict, seen: dict, out: Path,
                   device: Any) -> tuple[list, dict]:
    """model.context conv1d/bigru, inside an active MLflow run: freeze the stage-1 network, embed
    every slice once, fit the context head on whole sequences of embeddings, keep the epoch the
    selection rule picks. best.pt in ``out`` is the sequence model."""
    import mlflow
    import numpy as np

    from components import tracking
    from hemo_model.context import SequenceModel, build_context_head, embed, fit_context_head, head_scores
    from hemo_model.metrics import micro_f2
    from hemo_model.model import save_checkpoint
    from hemo_model.training import seed_everything, selected_epoch

    kind, cfg, train_cfg = settings.model.context, settings.refine, settings.train
    rule, rule_reason = selection_rule(settings.selection, roles["val"])
    started = time.perf_counter()
    workers = settings.data.loader_workers(device.type)
    train_embedded = embed(slice_model, roles["train"], config.image_size, device, train_cfg.precision,
                           settings.evaluate.batch_size, workers, config.channels)
    val_embedded = embed(slice_model, roles["val"], config.image_size, device, train_cfg.precision,
                         settings.evaluate.batch_size, workers, config.channels)
    val_labels = np.concatenate([p.labels for p in roles["val"]])

    def validate(head: Any) -> float:
        context, _ = head_scores(head, val_embedded)
        return micro_f2(val_labels, 1.0 / (1.0 + np.exp(-context)))

    seed_everything(train_cfg.seed)
    head = build_context_head(kind)
    tracking.log_params_flat({"refine": settings.to_dict()["refine"], "context": kind, "selection_rule": rule})
    mlflow.set_tag("hemo.selection", rule_reason)
    start_f2 = validate(head)  # the zero-initialised head scores like single slices
    mlflow.log_metric("val_micro_f2_single", start_f2)
    history, chosen, _ = fit_context_head(
        head, train_embedded, validate, loss_from(train_cfg), cfg.head_epochs, cfg.head_lr, train_cfg.seed,
        select=lambda h: selected_epoch(h, rule, settings.selection.ema_alpha),
        on_epoch=epoch_logger("train_slices_per_s"))
    best_f2 = next(h.val_micro_f2 for h in history if h.epoch == chosen)
    save_checkpoint(out / "best.pt", SequenceModel(slice_model, head), config.replace(context=kind),
                    epoch=chosen, val_micro_f2=best_f2, provenance=seen)
    summary = {"best_epoch": chosen, "best_val_micro_f2_context": best_f2, "val_micro_f2_context_before": start_f2,
               "context": kind, "seconds": round(time.perf_counter() - started, 1), "selection": rule,
               "selection_reason": rule_reason, "kept_refinement": True}
    return history, summary


def run(args: argparse.Namespace) -> int:
    from components import tracking

    settings = settings_from(args).override(
        "refine", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_steps=args.max_steps)

    slice_model, config, payload = read_checkpoint(args.init, "hemo train")
    if config.context != "filter":
        raise UserError(f"{args.init} already has a learned context ({config.context}); refine a stage-1 "
                        "checkpoint of `hemo train`")
    cluster, device = join_cluster(args.device)  # torchrun: one process per GPU; rank 0 logs and saves
    roles = load_roles(data_root(args, settings), settings.split, need=("train", "val"))
    seen = provenance(roles, settings.split, earlier=payload.get("provenance"))
    kind = settings.model.context
    current = fingerprint(settings, roles, "refine", args.init)
    resume = kind == "filter" and resume_decision(args.resume, args.out, current, "refine")
    if not cluster.is_main:  # other torchrun ranks share the method's refinement; a learned head is rank 0's alone
        if kind == "filter":
            refine_filter(settings, slice_model, config, roles, seen, args.out, device, resume, current, cluster)
        return 0
    with tracking.step_run("refine", settings, resume=resume):
        tracking.log_params_flat({"init": str(args.init)})
        if kind == "filter":
            history, summary = refine_filter(settings, slice_model, config, roles, seen, args.out, device, resume,
                                             current, cluster)
            title = "stage 2: 5-slice refinement"
        else:
            history, summary = refine_learned(settings, slice_model, config, roles, seen, args.out, device)
            title = f"stage 2: learned {kind} context head on frozen embeddings"
        publish_fit("refine", history, summary, args.reports, title)
    print(f"refine ({kind}): val micro-F2 {summary['val_micro_f2_context_before']:.4f} -> "
          f"{summary['best_val_micro_f2_context']:.4f} with context (epoch {summary['best_epoch']}, selection "
          f"'{summary['selection']}'), {summary['seconds']:.0f} s -> {args.out / 'best.pt'}")
    return 0
