"""The training stages as `hemo train`, `hemo refine` and `hemo ablate` run them: stage 1 on single
slices, the method's 5-slice refinement, and learned context heads, each inside an active MLflow
run. The one implementation of each stage: the steps only parse arguments and report.

Under torchrun every rank runs the same stage; what only rank 0 does (validate, checkpoint, log)
is decided in two places: the fit loop (:func:`hemo_model.training.loop.fit`) and the stage's
:class:`~hemo_pipeline.services.fit_reports.FitReporter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hemo_model import CLASSES
from hemo_model.data.datasets import SliceDataset, WindowDataset
from hemo_model.metrics.classification import micro_f2
from hemo_model.model.context import SequenceModel, build_context_head
from hemo_model.model.networks import ContextModel, build_model
from hemo_model.model.spec import ModelSpec
from hemo_model.model.storage import save_checkpoint
from hemo_model.training.checkpointer import BEST, Checkpointer
from hemo_model.training.context_head import embed, fit_context_head, head_scores
from hemo_model.training.distributed import SINGLE, Cluster
from hemo_model.training.history import EpochRecord, FitResult
from hemo_model.training.loop import fit, seed_everything
from hemo_model.training.sampling import expected_share, repeat_factors
from hemo_pipeline.services.fit_reports import FitReporter
from hemo_pipeline.services.patient_roles import provenance
from hemo_pipeline.services.resume import fingerprint
from hemo_pipeline.services.settings import Settings
from hemo_pipeline.services.training_setup import (
    fit_config,
    loss_from,
    model_spec,
    pretrained_path,
    selection_rule,
    slice_cache,
    val_trained,
    validator,
)


@dataclass
class Stage1:
    """What a finished stage-1 fit hands on."""

    result: FitResult
    summary: dict[str, Any]
    provenance: dict[str, Any]


def train_stage1(settings: Settings, roles: dict[str, list], out: Path, device: torch.device,
                 resume_from: dict[str, Any] | None = None, run_fingerprint: dict[str, Any] | None = None,
                 cluster: Cluster = SINGLE) -> Stage1:
    """Stage 1 as `hemo train` runs it, inside an active MLflow run (params and per-epoch metrics
    go there): the one implementation, also used by `hemo ablate`. ``resume_from`` is the last.pt
    payload to continue."""
    report = FitReporter(cluster.is_main)
    cfg = settings.train
    spec = model_spec(settings.model, cfg.image_size)
    seed_everything(cfg.seed)  # the initial weights too: same seed, same model
    model = build_model(spec, pretrained_path(settings.model))
    dataset = SliceDataset(roles["train"], cfg.image_size, channels=spec.channels,
                           cache=slice_cache(settings, roles["train"], cfg.image_size, spec.channels))
    rule, rule_reason = selection_rule(settings.selection, roles)
    validate = validator(roles["val"], cfg.image_size, (1.0,), device, cfg.precision, settings, spec.channels,
                         settings.evaluate.batch_size)
    seen = provenance(roles, settings.split)
    values = settings.to_dict()
    report.nested_params({k: values[k] for k in ("train", "model", "split", "selection")})
    report.params({"n_train_patients": len(roles["train"]), "n_val_patients": len(roles["val"]),
                   "n_train_slices": len(dataset), "device": str(device), "processes": cluster.world_size,
                   "train_patients_sha256": seen["train_patients_sha256"], "selection_rule": rule})
    report.tag("hemo.selection", rule_reason)
    checkpoints = Checkpointer(out, spec, {"provenance": seen, "target_epochs": cfg.epochs,
                                           "fingerprint": run_fingerprint or fingerprint(settings, roles, "train")})
    started = time.perf_counter()
    result = fit(model, dataset, validate, loss_from(cfg), fit_config(settings, "train", rule, device.type),
                 checkpoints, resume_from=resume_from, device=device, on_epoch=report.epochs("train_samples_per_s"),
                 cluster=cluster)
    summary = {
        "best_epoch": result.best_epoch, "best_val_micro_f2_single": result.best_val_micro_f2,
        "epochs": len(result.history), "seconds": round(time.perf_counter() - started, 1),
        "train_samples_per_s": round(sum(h.samples_per_s for h in result.history) / max(len(result.history), 1), 2),
        "train_patients": len(roles["train"]), "val_patients": len(roles["val"]),
        "selection": rule, "selection_reason": rule_reason, "refit_on_val": val_trained(roles),
        **sampling_summary(cfg, dataset),
    }
    return Stage1(result, summary, seen)


def sampling_summary(cfg: Any, dataset: Any) -> dict[str, Any]:
    """What the sampling rule does to this data: each class's share of the training slices and of
    an epoch's expected draws (the same under uniform sampling)."""
    labels = dataset.item_labels()
    factors = repeat_factors(labels, cfg.repeat_threshold) if cfg.sampling == "repeat_factor" \
        else np.ones(len(labels))
    data, drawn = expected_share(np.ones(len(labels)), labels), expected_share(factors, labels)
    return {"sampling": cfg.sampling,
            "class_share": {c: {"slices": round(float(a), 4), "drawn": round(float(b), 4)}
                            for c, a, b in zip(CLASSES, data, drawn, strict=True)}}


def refine_filter(settings: Settings, slice_model: torch.nn.Module, spec: ModelSpec, roles: dict, seen: dict,
                  out: Path, device: torch.device, resume_from: dict[str, Any] | None = None,
                  run_fingerprint: dict | None = None, cluster: Cluster = SINGLE) -> tuple[list[EpochRecord], dict]:
    """The method's refinement with the fixed 5-tap filter, inside an active MLflow run.
    Returns the history and the summary; best.pt in ``out`` is the model that moves on."""
    report = FitReporter(cluster.is_main)
    train_cfg, cfg = settings.train, settings.refine
    model = ContextModel(slice_model, spec.context_weights, freeze_batchnorm=cfg.batchnorm == "frozen")
    dataset = WindowDataset(roles["train"], spec.image_size, channels=spec.channels,
                            cache=slice_cache(settings, roles["train"], spec.image_size, spec.channels))
    rule, rule_reason = selection_rule(settings.selection, roles, seen)
    validate = validator(roles["val"], spec.image_size, tuple(spec.context_weights), device, train_cfg.precision,
                         settings, spec.channels, settings.evaluate.batch_size)
    report.nested_params({"refine": settings.to_dict()["refine"], "context": "filter", "selection_rule": rule})
    report.tag("hemo.selection", rule_reason)
    initial_state = {k: v.detach().clone() for k, v in slice_model.state_dict().items()}
    checkpoints = Checkpointer(out, spec, {"provenance": seen, "fingerprint": run_fingerprint or {},
                                           "target_epochs": cfg.epochs})
    started = time.perf_counter()
    result = fit(model, dataset, validate, loss_from(train_cfg), fit_config(settings, "refine", rule, device.type),
                 checkpoints, resume_from=resume_from, save_model=slice_model, device=device,
                 on_epoch=report.epochs("train_windows_per_s"), cluster=cluster, validate_initial=True)
    if not cluster.is_main:
        return result.history, {}
    start_f2 = float(result.initial_val_micro_f2 or 0.0)
    report.metric("val_micro_f2_context_before", start_f2)
    if rule != "last" and result.best_val_micro_f2 <= start_f2:
        # A val role that can tell shows refinement no better: stage 1 moves on unchanged. A val role
        # too small to tell keeps the method's refinement (with BatchNorm frozen it starts from stage
        # 1's behaviour; a decision on a handful of patients would be noise either way).
        slice_model.load_state_dict(initial_state)
        save_checkpoint(out / BEST, slice_model, spec, epoch=0, val_micro_f2=start_f2, provenance=seen)
        result.best_epoch, result.best_val_micro_f2 = 0, start_f2
    untold = ("val patients are among the trained ones (train.refit_on_val)" if val_trained(roles, seen)
              else "val role too small to tell")
    summary = {"best_epoch": result.best_epoch, "best_val_micro_f2_context": result.best_val_micro_f2,
               "val_micro_f2_context_before": start_f2, "seconds": round(time.perf_counter() - started, 1),
               "context": "filter", "selection": rule, "selection_reason": rule_reason,
               "kept_refinement": result.best_epoch > 0, "batchnorm": cfg.batchnorm,
               "kept_reason": (f"{untold}: the method's refinement moves on" if rule == "last" else
                               "refinement beat stage 1 on val" if result.best_epoch > 0 else
                               "refinement did not beat stage 1 on val: stage 1 kept")}
    return result.history, summary


def refine_learned(settings: Settings, slice_model: torch.nn.Module, spec: ModelSpec, roles: dict, seen: dict,
                   out: Path, device: torch.device) -> tuple[list[EpochRecord], dict]:
    """model.context conv1d/bigru, inside an active MLflow run: freeze the stage-1 network, embed
    every slice once, fit the context head on whole sequences of embeddings (the same fit loop,
    one sequence per step), keep the epoch the selection rule picks. best.pt in ``out`` is the
    sequence model."""
    report = FitReporter()
    kind, train_cfg = settings.model.context, settings.train
    rule, rule_reason = selection_rule(settings.selection, roles, seen)
    started = time.perf_counter()
    workers = settings.data.loader_workers(device.type)
    train_embedded = embed(slice_model, roles["train"], spec.image_size, device, train_cfg.precision,
                           settings.evaluate.batch_size, workers, spec.channels)
    val_embedded = embed(slice_model, roles["val"], spec.image_size, device, train_cfg.precision,
                         settings.evaluate.batch_size, workers, spec.channels)
    val_labels = np.concatenate([p.labels for p in roles["val"]])

    def validate(head: torch.nn.Module) -> float:
        context, _ = head_scores(head, val_embedded)
        return micro_f2(val_labels, 1.0 / (1.0 + np.exp(-context)))

    seed_everything(train_cfg.seed)
    head = build_context_head(kind)
    report.nested_params({"refine": settings.to_dict()["refine"], "context": kind, "selection_rule": rule})
    report.tag("hemo.selection", rule_reason)
    start_f2 = validate(head)  # the zero-initialised head scores like single slices
    report.metric("val_micro_f2_single", start_f2)
    result = fit_context_head(head, train_embedded, validate, loss_from(train_cfg),
                              fit_config(settings, "head", rule, device.type), on_epoch=report.epochs("train_slices_per_s"))
    save_checkpoint(out / BEST, SequenceModel(slice_model, head), spec.replace(context=kind),
                    epoch=result.best_epoch, val_micro_f2=result.best_val_micro_f2, provenance=seen)
    summary = {"best_epoch": result.best_epoch, "best_val_micro_f2_context": result.best_val_micro_f2,
               "val_micro_f2_context_before": start_f2, "context": kind,
               "seconds": round(time.perf_counter() - started, 1), "selection": rule,
               "selection_reason": rule_reason, "kept_refinement": True}
    return result.history, summary
