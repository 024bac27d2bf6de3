"""Evaluate the refined model on the held-out gate patients and register it as the challenger.

Thresholds are tuned per class on the `val` role (for 5-slice context and for single slices;
context logits are scaled differently) and stored with the model; they stay at 0.5 for a model
that trained on its val patients (`train.refit_on_val`). Where val can tell, the model is served
on single slices when they beat the 5-slice filter there (services/context_choice.py). The
calibration of the served probabilities and the triage cut-offs are fitted on val, judged on the
gate (ECE per slice and per exam before and after, a reliability diagram, the bins' rates,
each exam-level figure again per subgroup of subgroups.csv (scanner, thickness, matrix) with its
interval, reports/triage_report.md) and stored in the version's spec for `hemo score`, except for a model
that trained on its val patients: cut-offs fitted on its own training exams would let new bleeds
into "low risk", so such a version carries none (every exam deferred). The reported metrics are
measured on the `gate` role, which no training or selection decision has seen: micro-F2 single
slice vs 5-slice context at 0.5 (the leaderboard convention) and at the tuned thresholds, per-class
F2/precision/recall/ROC-AUC, the all-positive baseline and RSNA's weighted log loss. Logs ROC/PR curves, confusion counts
and example slices to MLflow (and reports/plots/ for `dvc plots`), then logs the model (safetensors
weights and its JSON spec: architecture, image size, context weights, thresholds; the digests and
training-patient provenance as parameters of this run),
registers it as `hemorrhage-classifier`, points `@challenger` at the new version and records that
version in --out (outputs/challenger.json) for the gate.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from hemo_model import CLASSES
from hemo_model.data.images import read_slice
from hemo_model.data.layout import DataError
from hemo_model.data.lesion_masks import check_outlined, outlined_patients
from hemo_model.data.subgroups import read_subgroups
from hemo_model.inference.scoring import stack_scores
from hemo_model.metrics.classification import (
    classification_report,
    confusion_counts,
    micro_f2,
    positive_groups,
    rsna_log_loss,
    tune_thresholds,
    untunable_classes,
)
from hemo_model.model.spec import EXAM_COLUMNS
from hemo_pipeline.services import plots, registry, tracking
from hemo_pipeline.services.calibration_report import (
    CalibrationReport,
    calibration_report,
    exam_decision_line,
    reliability_figure,
    subgroup_lines,
    subgroup_report,
    triage_line,
    triage_markdown,
)
from hemo_pipeline.services.context_choice import choose_context
from hemo_pipeline.services.devices import resolve_device
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_figure_atomic, write_json_atomic, write_text_atomic
from hemo_pipeline.services.patient_roles import load_roles
from hemo_pipeline.services.pointing_report import (
    pointing_figure,
    pointing_lines,
    pointing_markdown,
    pointing_metrics,
    pointing_report,
)
from hemo_pipeline.services.results import publish
from hemo_pipeline.services.serving import score_both
from hemo_pipeline.services.step_args import add_common_arguments, data_root, settings_from
from hemo_pipeline.services.training_setup import selection_rule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--model", type=Path, default=Path("outputs/refine/best.pt"), help="checkpoint to evaluate")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="metrics and plots folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/challenger.json"),
                        help="where the registered version is recorded")
    parser.add_argument("--no-register", action="store_true", help="evaluate only; do not log/register the model")


def _example_slices(scores: list, n: int) -> tuple[list[np.ndarray], list[str]]:
    """The most confident positives and negatives: what the model sees and what it says."""
    cells = []
    for s in scores:
        probs = s.probabilities
        for k in range(len(s.patient)):
            cells.append((float(probs[k].max()), s.patient, k, probs[k], s.patient.labels[k]))
    cells.sort(key=lambda c: c[0])
    picked = cells[-(n // 2):][::-1] + cells[: n - n // 2]
    images, captions = [], []
    for _, patient, k, probs, labels in picked:
        images.append(read_slice(patient.paths[k], 256))
        truth = ",".join(c for c, y in zip(CLASSES, labels) if y) or "none"
        top = ", ".join(f"{c} {p:.2f}" for c, p in sorted(zip(CLASSES, probs), key=lambda t: -t[1])[:2])
        captions.append(f"{patient.dirname} k={k}\ntrue: {truth}\npred: {top}")
    return images, captions


def _calibration_dict(report: CalibrationReport) -> dict[str, object]:
    """The fitted calibration for evaluate.json and MLflow, each number named by its class or column."""
    c = report.calibration
    return {"mode": c.mode, "temperatures": dict(zip(CLASSES, c.slice_temperatures)),
            "shifts": dict(zip(CLASSES, c.slice_shifts)),
            "exam_temperatures": dict(zip(EXAM_COLUMNS, c.exam_temperatures)),
            "exam_shifts": dict(zip(EXAM_COLUMNS, c.exam_shifts)),
            "low_risk_below": c.low_risk_below, "high_risk_above": c.high_risk_above,
            "low_risk_target": c.low_risk_target, "high_risk_target": c.high_risk_target,
            "val_exams": c.n_exams, "val_positive_exams": c.n_positive_exams,
            "fitted_on_trained_patients": c.fitted_on_trained_patients}


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN: a rate without a denominator (no gate positives, say) is written as null."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args: argparse.Namespace) -> int:

    settings = settings_from(args)
    cfg = settings.evaluate
    if "://" in str(args.model) or str(args.model).startswith("models:"):
        raise UserError("evaluate takes a checkpoint written by `hemo refine` (--model PATH.pt), not a registry URI")
    loaded = registry.load_model(str(args.model))
    seen = loaded.provenance
    if not args.no_register and not seen:
        raise UserError(f"{args.model} records no training patients (written by an older release); re-run "
                        "`hemo train` and `hemo refine` so the gate can check that no model saw its patients")
    device = resolve_device(args.device)
    root = data_root(args, settings)
    roles = load_roles(root, settings.split, need=("val", "gate"))
    try:
        groups = read_subgroups(root)  # refused before any scoring, not after minutes of it
    except DataError as exc:
        raise UserError(f"{exc} (or run `hemo validate`)") from exc
    skip_pointing = "run `hemo validate`, or skip the pointing game: --set evaluate.pointing_slices=0"
    if cfg.pointing_slices:
        try:  # the gate patients' lesion masks, likewise checked before any scoring
            check_outlined(root, outlined_patients(root) & {p.dirname for p in roles["gate"]})
        except DataError as exc:
            raise UserError(f"{exc} ({skip_pointing})") from exc

    def both_modes(patients: list) -> tuple:
        """(single-slice probs, context probs, labels, context scores): one forward pass per slice."""
        scores = score_both(loaded, patients, device, cfg.precision, cfg.batch_size,
                            settings.data.loader_workers(device.type), progress=True)
        single, labels = stack_scores([s.single() for s in scores])
        return single, stack_scores(scores)[0], labels, scores

    val_single, val_context, val_labels, val_scores = both_modes(roles["val"])
    trained = set((seen or {}).get("train_patients", []))
    refit = [p for p in roles["val"] if p.patient_key in trained]
    if cfg.tune_thresholds and refit:
        # the model trained on these patients (train.refit_on_val): thresholds tuned on them would
        # fit its training scores, not new patients'
        print(f"evaluate: thresholds kept at 0.5: {len(refit)} of the {len(roles['val'])} val scans were trained on "
              "(train.refit_on_val, or a stage trained under another split), so val cannot tune them")
        thresholds = thresholds_single = [0.5] * len(CLASSES)
    elif cfg.tune_thresholds:
        # one patient key per val slice, in the order both_modes stacked them
        keys = np.concatenate([[s.patient.patient_key] * len(s.probabilities) for s in val_scores]
                              ) if val_scores else np.zeros(0, dtype=str)
        kept = untunable_classes(val_labels, cfg.min_tune_positives, keys, cfg.min_tune_patients)
        thresholds, thresholds_single = (
            tune_thresholds(val_labels, probs, min_positives=cfg.min_tune_positives, groups=keys,
                            min_positive_groups=cfg.min_tune_patients)
            for probs in (val_context, val_single))
        if kept:
            slices, patients = val_labels.sum(axis=0), positive_groups(val_labels, keys)
            named = ", ".join(f"{CLASSES[i]} ({int(slices[i])} slices, {int(patients[i])} patients)" for i in kept)
            rest = "the other classes are tuned on val" if len(kept) < len(CLASSES) else "none is tuned"
            print(f"evaluate: thresholds of {named} kept at 0.5: fewer than evaluate.min_tune_positives "
                  f"{cfg.min_tune_positives} positive slices or evaluate.min_tune_patients {cfg.min_tune_patients} "
                  f"positive patients in the {len(roles['val'])} val scans; {rest}")
    else:
        thresholds = thresholds_single = [0.5] * len(CLASSES)
    # val decides the serving mode exactly where it may choose an epoch (selection_rule: the rule
    # in params, `auto` by the val role's size, never on patients the model trained on)
    rule, why = selection_rule(settings.selection, {"train": [], "val": roles["val"]}, seen)
    val_f2_context = micro_f2(val_labels, val_context, thresholds)
    val_f2_single = micro_f2(val_labels, val_single, thresholds_single)
    choice = choose_context(loaded.context, rule != "last", why, val_f2_context, val_f2_single)
    single_probs, context_probs, labels, scores = both_modes(roles["gate"])

    metrics = {f"{k}_context": v for k, v in classification_report(labels, context_probs).items()}
    metrics.update({f"{k}_single": v for k, v in classification_report(labels, single_probs).items()})
    metrics["micro_f2_context_tuned"] = micro_f2(labels, context_probs, thresholds)
    metrics["micro_f2_single_tuned"] = micro_f2(labels, single_probs, thresholds_single)
    metrics["micro_f2_served_tuned"] = (metrics["micro_f2_context_tuned"] if choice.use_context
                                        else metrics["micro_f2_single_tuned"])
    metrics["val_micro_f2_context_tuned"] = val_f2_context
    metrics["val_micro_f2_single_tuned"] = val_f2_single
    # F2 favours recall: flagging every cell scores 5p/(4p+1) at cell prevalence p (~0.36 at the
    # original class rates). Logged so nobody mistakes a score near it for a useful model.
    metrics["micro_f2_all_positive_baseline"] = micro_f2(labels, np.ones_like(context_probs))
    # RSNA's weighted log loss (six columns with `any`), to compare with the RSNA leaderboard.
    metrics["rsna_log_loss_context"] = rsna_log_loss(labels, context_probs)
    metrics["rsna_log_loss_single"] = rsna_log_loss(labels, single_probs)
    counts = confusion_counts(labels, context_probs, thresholds)
    calibration = calibration_report(val_scores, scores, choice.use_context, cfg.low_risk_fnr, cfg.high_risk_fpr,
                                     thresholds if choice.use_context else thresholds_single,
                                     fitted_on_trained_patients=bool(refit))
    metrics.update({k: v for k, v in calibration.metrics.items() if k.startswith("ece_")})
    subgroups = subgroup_report(calibration, groups)
    triage = calibration.triage
    metrics.update({f"triage_{k}": float(v) for k, v in triage.items() if isinstance(v, (int, float))})
    metrics.update({f"exam_{k}": float(v) for k, v in calibration.exam_decisions.items()
                    if k in ("sensitivity", "specificity")})
    try:  # the overlays' maps, checked where the gate patients' lesions are outlined (data/masks)
        pointing, pointing_examples = pointing_report(
            loaded, scores, choice.use_context, thresholds if choice.use_context else thresholds_single,
            thresholds_single, calibration.calibration if cfg.calibrate and not refit else None,  # as score orders
            root, cfg.pointing_slices, device)
    except DataError as exc:  # a mask changed since the check above
        raise UserError(f"{exc} ({skip_pointing})") from exc
    metrics.update(pointing_metrics(pointing))

    with tracking.step_run("evaluate", settings) as run:
        tracking.log_params_flat({"evaluate": settings.to_dict()["evaluate"], "model": str(args.model)})
        mlflow.log_params({"n_val_patients": len(roles["val"]), "n_gate_patients": len(roles["gate"]),
                           "n_gate_slices": len(labels)})
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_params({"served_with_context": choice.use_context})
        mlflow.log_dict({"calibration": _calibration_dict(calibration),
                         **calibration.metrics, "triage_on_gate": triage}, "evaluation/calibration.json")
        mlflow.log_dict({"subgroups_on_gate": _finite_or_null(subgroups)}, "evaluation/subgroups.json")
        mlflow.log_dict({"pointing_on_gate": _finite_or_null(pointing)}, "evaluation/pointing.json")
        mlflow.set_tag("hemo.context_choice", choice.reason)
        mlflow.log_dict({"thresholds": dict(zip(CLASSES, thresholds)),
                         "thresholds_single": dict(zip(CLASSES, thresholds_single)), "confusion_context": counts},
                        "evaluation/thresholds_and_confusion.json")
        figures = {
            "roc.png": plots.roc_figure(labels, context_probs, "ROC, gate patients, 5-slice context"),
            "pr.png": plots.pr_figure(labels, context_probs, "precision-recall, gate patients, 5-slice context"),
            "confusion.png": plots.confusion_figure(counts, "confusion counts at the tuned thresholds, 5-slice context"),
            "reliability.png": reliability_figure(calibration),
            "examples.png": plots.examples_figure(*_example_slices(scores, cfg.examples),
                                                  "most confident positives and negatives (gate patients)"),
        }
        pointing_plot = pointing_figure(loaded, scores, pointing_examples)
        if pointing_plot is not None:
            figures["pointing.png"] = pointing_plot
        else:  # no map this run: an earlier run's figure must not stand beside this run's report
            (args.reports / "plots" / "pointing.png").unlink(missing_ok=True)
        for name, figure in figures.items():
            write_figure_atomic(args.reports / "plots" / name, figure, dpi=90)
            tracking.log_figure(figure, name)
        report_md = triage_markdown(calibration, stored=cfg.calibrate, subgroups=subgroups,
                                    sections=pointing_markdown(pointing))
        write_text_atomic(args.reports / "triage_report.md", report_md)
        mlflow.log_text(report_md, "evaluation/triage_report.md")
        version = None
        if not args.no_register and seen:  # without provenance, registering was refused above
            spec = loaded.spec.replace(thresholds=tuple(thresholds), thresholds_single=tuple(thresholds_single))
            if not choice.use_context:  # served on single slices, at their own thresholds
                spec = spec.replace(context_weights=(1.0,), thresholds=tuple(thresholds_single))
            # a calibration fitted on patients the model trained on is optimistic: never stored
            spec = spec.replace(calibration=calibration.calibration if cfg.calibrate and not refit else None)
            # the thresholds were just tuned on this run's val patients: the version has seen them too
            tuned = sorted(set(seen.get("val_patients", [])) | {p.patient_key for p in roles["val"]})
            tuned_scans = {"val_series": sorted(set(seen.get("val_series", []))
                                                | {p.pixels_sha256 for p in roles["val"] if p.pixels_sha256}),
                           "val_scans": sorted(set(seen.get("val_scans", [])) | {p.dirname for p in roles["val"]})}
            version = registry.log_and_register(loaded.module, spec, {**seen, "val_patients": tuned, **tuned_scans},
                                                metrics)
            mlflow.set_tag("hemo.registered_version", version)
        run_id = run.info.run_id

    summary: dict[str, object] = {k: v for k, v in metrics.items() if np.isfinite(v)}
    summary["thresholds"] = dict(zip(CLASSES, thresholds))
    summary["thresholds_single"] = dict(zip(CLASSES, thresholds_single))
    summary["patients"] = {"val": len(roles["val"]), "gate": len(roles["gate"])}
    summary["served_with_context"], summary["context_choice"] = choice.use_context, choice.reason
    summary["calibration"] = {**_calibration_dict(calibration), **calibration.metrics,
                              "stored_with_model": cfg.calibrate and not refit}
    summary["triage_on_gate"] = _finite_or_null(triage)
    summary["exam_decisions_on_gate"] = _finite_or_null(calibration.exam_decisions)
    summary["subgroups_on_gate"] = _finite_or_null(subgroups)
    summary["pointing_on_gate"] = _finite_or_null(pointing)
    write_json_atomic(args.reports / "evaluate.json", summary)
    if version is not None:
        write_json_atomic(args.out, {"version": version, "run_id": run_id, "model_name": registry.MODEL_NAME})
        publish("evaluate", {"version": version, "run_id": run_id})
    print(f"evaluate (gate patients): micro-F2 single {metrics['micro_f2_single']:.4f}, 5-slice context "
          f"{metrics['micro_f2_context']:.4f}, context + thresholds tuned on val {metrics['micro_f2_context_tuned']:.4f}"
          f" (all-positive {metrics['micro_f2_all_positive_baseline']:.4f})"
          + (f"; registered {registry.MODEL_NAME} v{version} as @{registry.CHALLENGER}" if version else ""))
    m, fitted = calibration.metrics, zip(CLASSES, calibration.temperatures, calibration.shifts)
    print(f"evaluate: calibration on the gate patients as served, before -> after Platt scaling fitted on val "
          f"(T, shift: {', '.join(f'{c} {t:.2f} {b:+.2f}' for c, t, b in fitted)}): ECE slices "
          f"{m['ece_slice_raw']:.4f} -> {m['ece_slice_calibrated']:.4f} ({m['n_gate_slices']:.0f}), exams "
          f"{m['ece_exam_raw']:.4f} -> {m['ece_exam_calibrated']:.4f} ({m['n_gate_exams']:.0f} x any + 5 classes; a "
          f"perfectly calibrated model would read {m['ece_exam_calibrated_floor']:.4f} on these exams, 95 % of draws "
          f"below {m['ece_exam_calibrated_floor_p95']:.4f})"
          + ("; fitted on val patients the model trained on (train.refit_on_val): optimistic for new patients, "
             "not stored with the version (hemo score defers every exam)" if refit else ""))
    print(f"evaluate: {exam_decision_line(calibration.exam_decisions)} (95 % Clopper-Pearson)")
    print(f"evaluate: {triage_line(calibration)}")
    for line in subgroup_lines(subgroups):
        print(f"evaluate: by subgroup, {line}")
    for line in pointing_lines(pointing):
        print(f"evaluate: {line}")
    print(f"evaluate: served {'with its context' if choice.use_context else 'on single slices'} (gate micro-F2 "
          f"{metrics['micro_f2_served_tuned']:.4f} at its tuned thresholds): {choice.reason}")
    return 0
