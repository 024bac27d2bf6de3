"""Gate: promote the challenger only if it is better, measured fairly and with its uncertainty.

* Which models: exactly the version that this run's `evaluate` registered (outputs/challenger.json,
  or --version N) against the current `@champion`, each alias resolved to a version once and the
  models loaded by version.
* On which patients: the `gate` role (held out: no training, epoch selection or threshold tuning
  has seen it). Both models' recorded training patients are checked against it; if either model
  trained on a gate patient (e.g. the split salt or fractions changed) the comparison is unfair and
  the gate stops with an error instead of deciding.
* Judged as served: the same scoring code, context mode and stored thresholds as `hemo score`.
* The rule (settings `gate`), with a paired bootstrap over gate patients:
  1. micro-F2 beats the all-positive model by at least `min_margin_over_trivial`;
  2. every class with positives reaches `min_class_f2`;
  and against a champion:
  3. the 95% interval of the micro-F2 gain lies above 0;
  4. the mean gain is at least `min_improvement`;
  5. no class's F2 drops by more than `max_class_drop`.
* `@champion` moves by compare-and-set (if another client moved it meanwhile, nothing changes and
  the step exits 3); the replaced champion becomes `@previous` (`hemo rollback` restores it).

Writes reports/gate.json, reports/gate_report.md (also logged to the challenger version's run and
linked from its tags) and the per-slice decisions of each model in reports/gate/.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_model.data.roles import patients_digest
from hemo_model.metrics.bootstrap import (
    bootstrap_weights,
    f2_from_counts,
    interval,
    interval_where_defined,
    micro_counts,
    patient_counts,
    precision_from_counts,
    recall_from_counts,
    resample_counts,
)
from hemo_pipeline.services import registry, serving, tracking
from hemo_pipeline.services.devices import resolve_device
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_csv_atomic, write_json_atomic, write_text_atomic
from hemo_pipeline.services.patient_roles import load_roles
from hemo_pipeline.services.results import publish
from hemo_pipeline.services.settings import GateSettings
from hemo_pipeline.services.step_args import add_common_arguments, data_root, settings_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--version", help="the registered version to gate (default: the one in --challenger)")
    parser.add_argument("--challenger", type=Path, default=Path("outputs/challenger.json"),
                        help="the version `hemo evaluate` registered in this run")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where gate.json and the report go")
    parser.add_argument("--min-improvement", type=float, help="gate.min_improvement")


# --- the rule (pure) -------------------------------------------------------------------------


@dataclass
class RuleOutcome:
    name: str
    passed: bool
    detail: str


@dataclass
class ModelSummary:
    """Point estimates and bootstrap intervals of one model on the gate patients."""

    micro_f2: float
    micro_f2_interval: tuple[float, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Judgement:
    promote: bool
    reason: str
    rules: list[RuleOutcome]
    challenger: ModelSummary
    champion: ModelSummary | None
    trivial_micro_f2: float
    gain: float | None = None
    gain_interval: tuple[float, float] | None = None


def summarise(counts: np.ndarray, resampled: np.ndarray, confidence: float) -> ModelSummary:
    """``counts`` (patients, classes, 3) and their bootstrap resamples (B, classes, 3)."""
    pooled = counts.sum(axis=0)
    micro_samples = f2_from_counts(micro_counts(resampled))
    low, high = interval(micro_samples, confidence)
    per_class: dict[str, dict[str, float]] = {}
    for name, metric in (("f2", f2_from_counts), ("precision", precision_from_counts), ("recall", recall_from_counts)):
        point = metric(pooled)
        c_low, c_high = interval_where_defined(metric(resampled), resampled, name, confidence, point)
        for i, cls in enumerate(CLASSES):
            entry = per_class.setdefault(cls, {"positives": float(pooled[i, 0] + pooled[i, 2])})
            entry.update({name: float(point[i]), f"{name}_low": float(c_low[i]), f"{name}_high": float(c_high[i])})
    return ModelSummary(float(f2_from_counts(micro_counts(pooled))), (float(low), float(high)), per_class)


def judge(challenger: np.ndarray, champion: np.ndarray | None, trivial: np.ndarray, gate: GateSettings) -> Judgement:
    """The promotion rule on per-patient confusion counts (patients, classes, [tp, fp, fn]) of the
    challenger, the champion (None for a first model) and the all-positive model, paired by patient."""
    weights = bootstrap_weights(challenger.shape[0], gate.bootstrap, gate.seed)
    resampled = {"challenger": resample_counts(challenger, weights), "trivial": resample_counts(trivial, weights)}
    chal = summarise(challenger, resampled["challenger"], gate.confidence)
    trivial_f2 = float(f2_from_counts(micro_counts(trivial.sum(axis=0))))
    rules = []
    margin = chal.micro_f2 - trivial_f2
    rules.append(RuleOutcome(
        "beats_all_positive", margin >= gate.min_margin_over_trivial,
        f"micro-F2 {chal.micro_f2:.4f} vs all-positive {trivial_f2:.4f}: {margin:+.4f} "
        f"(needs >= {gate.min_margin_over_trivial})"))
    judged = [c for c, v in chal.per_class.items() if v["positives"] > 0]
    low = [f"{c} {chal.per_class[c]['f2']:.3f}" for c in judged if chal.per_class[c]["f2"] < gate.min_class_f2]
    rules.append(RuleOutcome(
        "class_floor", not low,
        (f"below {gate.min_class_f2}: " + ", ".join(low)) if low
        else f"every class with positives ({', '.join(judged) or 'none'}) has F2 >= {gate.min_class_f2}"))
    champ = gain = gain_interval = None
    if champion is not None:
        resampled["champion"] = resample_counts(champion, weights)
        champ = summarise(champion, resampled["champion"], gate.confidence)
        gains = f2_from_counts(micro_counts(resampled["challenger"])) - f2_from_counts(micro_counts(resampled["champion"]))
        gain = float(gains.mean())
        g_low, g_high = interval(gains, gate.confidence)
        gain_interval = (float(g_low), float(g_high))
        level = f"{gate.confidence:.0%}"
        rules.append(RuleOutcome(
            "gain_interval_above_zero", gain_interval[0] > 0,
            f"{level} interval of the micro-F2 gain [{gain_interval[0]:+.4f}, {gain_interval[1]:+.4f}]"))
        rules.append(RuleOutcome(
            "min_improvement", gain >= gate.min_improvement,
            f"mean gain {gain:+.4f} (needs >= {gate.min_improvement})"))
        drops = {c: champ.per_class[c]["f2"] - chal.per_class[c]["f2"] for c in judged}
        worst = max(drops, key=lambda c: drops[c]) if drops else None
        too_much = [f"{c} {champ.per_class[c]['f2']:.3f} -> {chal.per_class[c]['f2']:.3f}"
                    for c in judged if drops[c] > gate.max_class_drop]
        rules.append(RuleOutcome(
            "class_drop", not too_much,
            ("F2 drops more than " + f"{gate.max_class_drop}: " + ", ".join(too_much)) if too_much
            else f"largest class drop {drops[worst]:+.3f} ({worst}) <= {gate.max_class_drop}" if worst
            else "no class with positives"))
    failed = [r for r in rules if not r.passed]
    promote = not failed
    if promote:
        reason = ("first model: " if gain is None or gain_interval is None else
                  f"gain {gain:+.4f} [{gain_interval[0]:+.4f}, {gain_interval[1]:+.4f}]; ") + "all rules passed"
    else:
        reason = "; ".join(f"{r.name}: {r.detail}" for r in failed)
    return Judgement(promote, reason, rules, chal, champ, trivial_f2, gain, gain_interval)


# --- the step --------------------------------------------------------------------------------


def challenger_version(args: argparse.Namespace) -> str:
    if args.version:
        return str(args.version)
    if not args.challenger.is_file():
        raise UserError(f"{args.challenger} not found: run `hemo evaluate` first (it registers the challenger and "
                        "records its version there), or pass --version N")
    try:
        return str(json.loads(args.challenger.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{args.challenger} does not name a version ({exc}); re-run `hemo evaluate`") from exc


def check_fair(version: str, gate_patients: set[str], role: str) -> dict[str, Any]:
    """Refuse when ``version`` trained on any gate patient; return its provenance for the report."""
    seen = registry.train_patients(version)
    overlap = sorted(gate_patients & set(seen))
    if overlap:
        split = registry.recorded_split(version)
        raise UserError(
            f"the {role} v{version} trained on {len(overlap)} of the {len(gate_patients)} gate patients "
            f"(e.g. {', '.join(overlap[:3])}): comparing on them would be unfair, so the gate refuses. It was trained "
            f"with split salt {split.get('salt')!r}, val {split.get('val_fraction')}, gate "
            f"{split.get('gate_fraction')}; restore those split settings, or retrain both models under "
            "the current ones (or promote by hand: `hemo promote --version N --reason ...`)")
    return {"train_patients": len(seen), "train_patients_sha256": patients_digest(seen)}


def run(args: argparse.Namespace) -> int:

    settings = settings_from(args).override("gate", min_improvement=args.min_improvement)
    cfg = settings.gate
    tracking.configure()
    challenger = challenger_version(args)
    registry.require_version(challenger)
    champion = registry.alias_version(registry.CHAMPION)  # resolved once; compared again before writing

    roles = load_roles(data_root(args, settings), settings.split, need=("gate",))
    patients = roles["gate"]
    labels = [p.labels for p in patients]
    if sum(float(y.sum()) for y in labels) == 0:
        raise UserError(f"the {len(patients)} gate patients hold no positive label, so no F2 can be measured; "
                        "raise split.gate_fraction or add labelled patients")
    gate_ids = {p.dirname for p in patients}
    versions = {"challenger": challenger} | ({"champion": champion} if champion and champion != challenger else {})
    fairness = {role: check_fair(v, gate_ids, role) for role, v in versions.items()}

    device = resolve_device(args.device)
    workers = settings.data.loader_workers(device.type)
    served = {role: serving.serve(registry.load_version(v), patients, settings.score, device, workers)
              for role, v in versions.items()}
    counts = {role: patient_counts(labels, s.decisions()) for role, s in served.items()}
    trivial = patient_counts(labels, [np.ones_like(y) for y in labels])
    judgement = judge(counts["challenger"], counts.get("champion"), trivial, cfg)
    if champion == challenger:
        judgement.promote, judgement.reason = False, f"challenger v{challenger} is already the champion"

    decision = {
        "promoted": judgement.promote, "reason": judgement.reason, "challenger_version": challenger,
        "champion_version_before": champion,
        "champion_version_after": challenger if judgement.promote else champion,
        "challenger_micro_f2": judgement.challenger.micro_f2,
        "challenger_micro_f2_interval": list(judgement.challenger.micro_f2_interval),
        "champion_micro_f2": judgement.champion.micro_f2 if judgement.champion else None,
        "all_positive_micro_f2": judgement.trivial_micro_f2,
        "gain": judgement.gain, "gain_interval": list(judgement.gain_interval) if judgement.gain_interval else None,
        "rules": [asdict(r) for r in judgement.rules],
        "gate_patients": len(patients), "gate_slices": int(sum(len(p) for p in patients)),
        "scoring": {"context": settings.score.context, "precision": settings.score.precision,
                    "thresholds": {role: s.thresholds for role, s in served.items()}},
        "settings": asdict(cfg), "split": asdict(settings.split), "provenance": fairness,
        "data_md5": tracking.data_md5(),
    }
    report = gate_report(decision, judgement, versions)

    with tracking.step_run("gate", settings) as run:
        tracking.log_params_flat({"gate": asdict(cfg)})
        mlflow.log_params({"challenger_version": challenger, "champion_version_before": champion})
        mlflow.log_metrics({"challenger_micro_f2": judgement.challenger.micro_f2, "promoted": float(judgement.promote),
                            "all_positive_micro_f2": judgement.trivial_micro_f2,
                            **({"champion_micro_f2": judgement.champion.micro_f2} if judgement.champion else {}),
                            **({"gain": judgement.gain} if judgement.gain is not None else {})})
        mlflow.set_tag("hemo.gate_reason", judgement.reason[:5000])
        if judgement.promote:
            try:
                registry.move_champion(challenger, champion, how="gate", reason=judgement.reason)
            except registry.AliasMoved:
                mlflow.set_tag("hemo.gate_conflict", "champion moved during the gate")
                raise
        mlflow.log_text(report, "gate/gate_report.md")
        version_run = registry.require_version(challenger).run_id
        mlflow.MlflowClient().log_text(version_run, report, f"gate/gate_report_{run.info.run_id}.md")
        registry.tag_version(challenger, {
            "gate.decision": "promoted" if judgement.promote else "rejected", "gate.reason": judgement.reason,
            "gate.report": f"runs:/{version_run}/gate/gate_report_{run.info.run_id}.md",
            "gate.run_id": run.info.run_id})

    write_json_atomic(args.reports / "gate.json", decision)
    write_text_atomic(args.reports / "gate_report.md", report)
    _write_decisions(args.reports / "gate", versions, served)
    verdict = "PROMOTED to @champion" if judgement.promote else "NOT promoted"
    print(f"gate: challenger v{challenger} {verdict}: {judgement.reason}")
    after = challenger if judgement.promote else champion
    publish("gate", {**{key: decision[key] for key in ("promoted", "reason", "challenger_version",
                                                       "champion_version_before", "champion_version_after")},
                     "champion_model_after": registry.version_uri(after) if after else None})
    return 0


def _write_decisions(folder: Path, versions: dict[str, str], served: dict[str, Any]) -> None:
    """Each model's per-slice decisions on the gate patients, in `hemo score`'s CSV format."""
    for role, result in served.items():
        rows = [[s.patient.dirname, path.name, *d[k].tolist()]
                for s, d in zip(result.scores, result.decisions()) for k, path in enumerate(s.patient.paths)]
        write_csv_atomic(folder / f"decisions_v{versions[role]}.csv", list(LABEL_COLUMNS), rows)


def gate_report(decision: dict[str, Any], judgement: Judgement, versions: dict[str, str]) -> str:
    """The per-version gate report (Markdown): rules, per-class metrics with intervals, provenance."""
    level = f"{decision['settings']['confidence']:.0%}"
    title = f"v{versions['challenger']}" + (f" vs champion v{versions['champion']}" if "champion" in versions
                                            else " (no champion yet)")
    lines = [f"# Gate report: hemorrhage-classifier {title}", "",
             f"**Decision: {'PROMOTED to @champion' if decision['promoted'] else 'not promoted'}** - {decision['reason']}",
             "", f"Gate patients: {decision['gate_patients']} ({decision['gate_slices']} slices), held out from "
             f"training and model selection. Scored as served: context {decision['scoring']['context']}, "
             f"{decision['scoring']['precision']}, each model's stored thresholds. Intervals: {level} paired "
             f"bootstrap over patients ({decision['settings']['bootstrap']} resamples, seed "
             f"{decision['settings']['seed']}).", "", "| rule | outcome | detail |", "|---|---|---|"]
    lines += [f"| {r.name} | {'pass' if r.passed else 'FAIL'} | {r.detail} |" for r in judgement.rules]
    models = [("challenger", judgement.challenger)] + ([("champion", judgement.champion)] if judgement.champion else [])
    lines += ["", "| model | micro-F2 | interval |", "|---|---|---|"]
    lines += [f"| {role} v{versions[role]} | {m.micro_f2:.4f} | [{m.micro_f2_interval[0]:.4f}, "
              f"{m.micro_f2_interval[1]:.4f}] |" for role, m in models]
    lines.append(f"| all-positive | {judgement.trivial_micro_f2:.4f} | |")
    if judgement.gain is not None and judgement.gain_interval is not None:
        lines.append(f"\nMean micro-F2 gain {judgement.gain:+.4f}, {level} interval "
                     f"[{judgement.gain_interval[0]:+.4f}, {judgement.gain_interval[1]:+.4f}].")
    header = "| class | positive slices | " + " | ".join(
        f"v{versions[role]} {metric}" for role, _ in models for metric in ("F2", "precision", "recall")) + " |"
    lines += ["", header, "|" + "---|" * (2 + 3 * len(models))]
    for cls in CLASSES:
        cells = [f"{judgement.challenger.per_class[cls]['positives']:.0f}"]
        for _, m in models:
            for metric in ("f2", "precision", "recall"):
                v = m.per_class[cls]
                cells.append(f"{v[metric]:.3f} [{v[metric + '_low']:.3f}, {v[metric + '_high']:.3f}]")
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    split = decision["split"]
    lines += ["", "## Provenance", "", f"- data md5 (data.dvc): {decision['data_md5']}",
              f"- split: salt {split['salt']!r}, val fraction {split['val_fraction']:.4f}, gate fraction "
              f"{split['gate_fraction']:.4f}"]
    for role, info in decision["provenance"].items():
        lines.append(f"- {role} v{versions[role]}: trained on {info['train_patients']} patients, none of them a gate "
                     f"patient; patient-list sha256 {info['train_patients_sha256']}")
    return "\n".join(lines) + "\n"
