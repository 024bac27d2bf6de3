"""Gate: promote the challenger only if it is shown better, measured fairly and with its uncertainty.

* Which models: exactly the version that this run's `evaluate` registered (outputs/challenger.json,
  or --version N) against the current `@champion` (and the approved `@reference`, if a person set
  one with `hemo promote --reference`), each alias resolved to a version once, models loaded by version.
* On which patients: the `gate` role (held out: no training, epoch selection, threshold tuning or
  ablation has seen it). Every model's recorded training patients are checked against it; if one
  trained on a gate patient (e.g. the split salt or fractions changed) the gate stops with an error.
* Judged as served: the same scoring code, context mode and stored thresholds as `hemo score`.
* The policy (settings `gate`, hemo_model.metrics.gate_statistics, docs/gate_policy.md):
  a gate smaller than `min_patients` / `min_positive_patients` per class refuses (exit 2; a
  person may promote by hand); every model, the first included, beats the all-positive model
  overall and per class by a margin, meets a per-class recall floor and an exam-level "any
  hemorrhage" sensitivity floor; against a champion, `superiority` needs a paired permutation
  test of the observed micro-F2 gain at level `alpha`, the gain >= `min_improvement` and no class
  dropping more than `max_class_drop`; `noninferiority` needs one-sided lower bounds above
  -`ni_margin` (overall, per class) and an approved `@reference`; against `@reference` the
  cumulative drift stays within the budget, whatever chain of promotions led here.
* `@champion` moves by compare-and-set under the registry's lease (if another client moved it
  meanwhile, nothing changes and the step exits 3); the replaced champion becomes `@previous`
  (`hemo rollback` restores it). A retried gate whose earlier try already promoted this challenger
  recognises its own promotion and reports it instead of rejecting the champion.

Writes reports/gate.json, reports/gate_report.md (also logged to the challenger version's run and
linked from its tags) and the per-slice decisions of each model in reports/gate/.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_model.data.roles import patients_digest
from hemo_model.metrics import gate_statistics as gs
from hemo_model.metrics.bootstrap import (
    bootstrap_weights,
    counts_by_patient,
    f2_from_counts,
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
from hemo_pipeline.services.role_capacity import gate_shortfall
from hemo_pipeline.services.settings import GateSettings
from hemo_pipeline.services.step_args import add_common_arguments, data_root, settings_from

GATE_SET_TAG = "hemo.gate_set"
"""Tag on every gate run: the SHA-256 of its gate patients, so decisions on one gate set are counted."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--version", help="the registered version to gate (default: the one in --challenger)")
    parser.add_argument("--challenger", type=Path, default=Path("outputs/challenger.json"),
                        help="the version `hemo evaluate` registered in this run")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where gate.json and the report go")
    parser.add_argument("--min-improvement", type=float, help="gate.min_improvement")


def policy_of(cfg: GateSettings) -> gs.GatePolicy:
    """The statistics module's policy from the typed settings (one name differs: the micro margin)."""
    return gs.GatePolicy(
        mode=cfg.mode, alpha=cfg.alpha, bound_alpha=cfg.bound_alpha, alpha_spending=cfg.alpha_spending,
        min_improvement=cfg.min_improvement, margin_over_trivial=cfg.min_margin_over_trivial,
        class_margin_over_trivial=cfg.class_margin_over_trivial, class_recall_floor=cfg.class_recall_floor,
        exam_sensitivity_floor=cfg.exam_sensitivity_floor, min_patients=cfg.min_patients,
        min_positive_patients=cfg.min_positive_patients, max_class_drop=cfg.max_class_drop, ni_margin=cfg.ni_margin,
        ni_class_margin=cfg.ni_class_margin, drift_budget=cfg.drift_budget, drift_class_budget=cfg.drift_class_budget,
        permutations=cfg.permutations, bootstrap=cfg.bootstrap, seed=cfg.seed)


def summarise(counts: np.ndarray, policy: gs.GatePolicy) -> dict[str, Any]:
    """One model on the gate patients: micro-F2 with its BCa interval, and per class F2, precision
    and recall with paired-bootstrap percentile intervals (classes without positives: undefined)."""
    confidence = 1.0 - 2.0 * policy.alpha
    low, high = (float(x) for x in gs.bca_interval(counts, None, policy.alpha, policy.bootstrap, policy.seed))
    resampled = resample_counts(counts, bootstrap_weights(counts.shape[0], policy.bootstrap, policy.seed))
    pooled = counts.sum(axis=0)
    per_class: dict[str, dict[str, float]] = {}
    for name, metric in (("f2", f2_from_counts), ("precision", precision_from_counts), ("recall", recall_from_counts)):
        point = metric(pooled)
        c_low, c_high = interval_where_defined(metric(resampled), resampled, name, confidence, point)
        for i, cls in enumerate(CLASSES):
            entry = per_class.setdefault(cls, {"positives": float(pooled[i, 0] + pooled[i, 2])})
            entry.update({name: float(point[i]), f"{name}_low": float(c_low[i]), f"{name}_high": float(c_high[i])})
    return {"micro_f2": float(f2_from_counts(micro_counts(pooled))), "micro_f2_interval": [low, high],
            "per_class": per_class}


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


def check_fair(version: str, gate: list, role: str) -> dict[str, Any]:
    """Refuse when ``version`` trained on, or chose its epoch and thresholds on, any patient of the
    ``gate`` scans: by patient key or scan folder (versions of older releases, and data without
    series.csv, recorded folders), or by the pixels of a gate scan whatever it is called now;
    return its provenance for the report."""
    seen = registry.seen_patients(version)
    train, tuned = seen["train"] or [], seen["val"]
    patients = {p.patient_key for p in gate}
    for used, how in ((set(train) | set(seen.get("train_scans") or []), "trained on"),
                      (set(tuned or []) | set(seen.get("val_scans") or []), "was tuned (epoch, thresholds) on")):
        overlap = sorted({p.patient_key for p in gate if p.patient_key in used or p.dirname in used})
        if overlap:
            split = registry.recorded_split(version)
            raise UserError(
                f"the {role} v{version} {how} {len(overlap)} of the {len(patients)} gate patients "
                f"(e.g. {', '.join(overlap[:3])}): comparing on them would be unfair, so the gate refuses. It was "
                f"trained with split salt {split.get('salt')!r}, val {split.get('val_fraction')}, gate "
                f"{split.get('gate_fraction')}; restore those split settings, or retrain both models under "
                "the current ones (or promote by hand: `hemo promote --version N --reason ...`)")
    scans = {p.pixels_sha256: p.dirname for p in gate if p.pixels_sha256}
    for used_pixels, how in ((seen.get("train_series") or [], "trained on"),
                             (seen.get("val_series") or [], "was tuned (epoch, thresholds) on")):
        same = sorted(scans[f] for f in set(used_pixels) & scans.keys())
        if same:
            raise UserError(
                f"the {role} v{version} {how} the pixels of {len(same)} of the {len(scans)} gate scans under other "
                f"names (e.g. {', '.join(same[:3])}; the same series imported again with another DICOM salt?): "
                "comparing on them would be unfair, so the gate refuses. Import with the salt the data set was made "
                "with (HEMO_DICOM_SALT or the salt file), or retrain both models on the data as it is now "
                "(or promote by hand: `hemo promote --version N --reason ...`)")
    recorded = seen.get("train_series")
    return {"train_patients": len(train), "train_patients_sha256": patients_digest(train),
            "val_patients": None if tuned is None else len(tuned),
            "val_patients_sha256": None if tuned is None else patients_digest(tuned),
            "scans_fingerprinted": None if recorded is None else len(recorded) + len(seen.get("val_series") or []),
            "gate_scans_fingerprinted": len(scans)}


def require_gate_size(trivial: np.ndarray, policy: gs.GatePolicy, challenger: str) -> None:
    """Refuse (exit 2, before any model is scored) a gate too small to judge on: a person may accept
    the risk and promote by hand, the gate itself never does."""
    if bool(gs.gate_size_ok(trivial, policy.min_patients, policy.min_positive_patients)):
        return
    problems = gate_shortfall(trivial.shape[0], gs.positive_patients(trivial), policy.min_patients,
                              policy.min_positive_patients)
    raise UserError(f"the gate role is too small to judge v{challenger} on: {'; '.join(problems)}; add labelled "
                    "patients or raise split.gate_fraction (with new models), or have a person sign off: "
                    f"`hemo promote --version {challenger} --reason ...`")


def decision_number(digest: str, policy: gs.GatePolicy) -> int:
    """How many superiority decisions this gate set has seen, this one included (alpha spending);
    1 when spending is off, so no search is made."""
    if not (policy.alpha_spending and policy.mode == "superiority"):
        return 1
    experiment = mlflow.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    if experiment is None:
        return 1
    earlier = mlflow.search_runs([experiment.experiment_id], output_format="list",
                                 filter_string=f"tags.`{GATE_SET_TAG}` = '{digest}' and tags.`hemo.gate_compared` = 'true'")
    return 1 + len(earlier)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args).override("gate", min_improvement=args.min_improvement)
    cfg = settings.gate
    policy = policy_of(cfg)
    tracking.configure()
    challenger = challenger_version(args)
    registry.require_version(challenger)
    champion = registry.alias_version(registry.CHAMPION)  # resolved once; compared again under the lease
    reference = registry.alias_version(registry.REFERENCE)
    if champion is not None and champion == challenger:
        return already_champion(args, challenger)
    if promoted_earlier(challenger):
        return already_champion(args, challenger, replaced_by=champion)

    roles = load_roles(data_root(args, settings), settings.split, need=("gate",))
    patients = roles["gate"]
    labels = [p.labels for p in patients]
    if sum(float(y.sum()) for y in labels) == 0:
        raise UserError(f"the {len(patients)} gate patients hold no positive label, so no F2 can be measured; "
                        "raise split.gate_fraction or add labelled patients")
    keys = [p.patient_key for p in patients]  # scans of one person are judged, resampled and permuted together
    trivial = counts_by_patient(patient_counts(labels, [np.ones_like(y) for y in labels]), keys)
    require_gate_size(trivial, policy, challenger)
    gate_ids = set(keys)
    versions = {"challenger": challenger} | ({"champion": champion} if champion else {}) | (
        {"reference": reference} if reference else {})
    fairness = {role: check_fair(v, patients, role) for role, v in versions.items()}

    device = resolve_device(args.device)
    workers = settings.data.loader_workers(device.type)
    by_version = {v: serving.serve(registry.load_version(v), patients, settings.score, device, workers)
                  for v in dict.fromkeys(versions.values())}
    served = {role: by_version[v] for role, v in versions.items()}
    counts = {role: counts_by_patient(patient_counts(labels, s.decisions()), keys) for role, s in served.items()}
    digest = gs.gate_set_digest(sorted(gate_ids))
    number = decision_number(digest, policy) if champion else 1
    result = gs.decide(counts["challenger"], trivial, counts.get("champion"), counts.get("reference"), policy,
                       decision_number=number)
    summaries = {role: summarise(c, policy) for role, c in counts.items()}
    champion_figures = result.figures.get("champion") if champion else None
    against: dict[str, Any] = champion_figures if isinstance(champion_figures, dict) else {}

    decision: dict[str, Any] = {
        "promoted": result.promote, "reason": result.reason, "challenger_version": challenger,
        "champion_version_before": champion, "champion_version_after": challenger if result.promote else champion,
        "reference_version": reference, "mode": policy.mode,
        "challenger_micro_f2": summaries["challenger"]["micro_f2"],
        "challenger_micro_f2_interval": summaries["challenger"]["micro_f2_interval"],
        "champion_micro_f2": summaries["champion"]["micro_f2"] if champion else None,
        "all_positive_micro_f2": float(gs.micro_f2(trivial)),
        "gain": against.get("gain"), "gain_interval": against.get("gain_interval_bca"), "p_value": against.get("p_value"),
        "rules": [asdict(r) for r in result.rules], "figures": result.figures, "models": summaries,
        "gate_patients": len(gate_ids), "gate_scans": len(patients), "gate_slices": int(sum(len(p) for p in patients)),
        "positive_patients": result.figures.get("positive_patients"), "gate_set_sha256": digest,
        "decision_number": number,
        "scoring": {"context": settings.score.context, "precision": settings.score.precision,
                    "thresholds": {role: s.thresholds for role, s in served.items()}},
        "policy": asdict(policy), "settings": asdict(cfg), "split": asdict(settings.split), "provenance": fairness,
        "data_md5": tracking.data_md5(),
    }

    with tracking.step_run("gate", settings) as run:
        tracking.log_params_flat({"gate": asdict(cfg)})
        mlflow.log_params({"challenger_version": challenger, "champion_version_before": champion,
                           "reference_version": reference})
        mlflow.log_metrics({"challenger_micro_f2": decision["challenger_micro_f2"], "promoted": float(result.promote),
                            "all_positive_micro_f2": decision["all_positive_micro_f2"],
                            **({"champion_micro_f2": decision["champion_micro_f2"]} if champion else {}),
                            **({"gain": decision["gain"]} if decision["gain"] is not None else {}),
                            **({"p_value": decision["p_value"]} if decision["p_value"] is not None else {})})
        mlflow.set_tags({"hemo.gate_reason": result.reason[:5000], GATE_SET_TAG: digest,
                         "hemo.gate_compared": str(bool(champion) and policy.mode == "superiority").lower()})
        if result.promote:
            try:
                registry.move_champion(challenger, champion, how="gate", reason=result.reason,
                                       expected_reference=reference)  # drift was measured against it
            except registry.AliasMoved:
                mlflow.set_tag("hemo.gate_conflict", "champion or reference moved during the gate")
                raise
        decision["alias_history"] = registry.alias_history()
        report = gate_report(decision, versions)
        mlflow.log_text(report, "gate/gate_report.md")
        version_run = registry.require_version(challenger).run_id
        mlflow.MlflowClient().log_text(version_run, report, f"gate/gate_report_{run.info.run_id}.md")
        registry.tag_version(challenger, {
            "gate.decision": "promoted" if result.promote else "rejected", "gate.reason": result.reason[:5000],
            "gate.report": f"runs:/{version_run}/gate/gate_report_{run.info.run_id}.md",
            "gate.run_id": run.info.run_id})

    write_json_atomic(args.reports / "gate.json", decision)
    write_text_atomic(args.reports / "gate_report.md", report)
    _write_decisions(args.reports / "gate", versions, served)
    _finish(decision)
    return 0


def promoted_earlier(challenger: str) -> bool:
    """Whether a gate already promoted ``challenger`` (the alias history records it): then a retry
    of that gate must not judge it again against whoever replaced it since, nor tag it `rejected`."""
    return any(e.get("alias") == registry.CHAMPION and str(e.get("version")) == challenger and e.get("how") == "gate"
               for e in registry.alias_history())


def already_champion(args: argparse.Namespace, challenger: str, replaced_by: str | None = None) -> int:
    """The challenger is, or was, @champion already. After a gate that moved the alias and then
    failed (a lost connection while tagging, say), its retry lands here: it recognises its own
    earlier promotion (``champion.how = gate`` on the version) and reports it, so the run goes on
    to score with it; it never tags the version `rejected`. If another promotion replaced it since
    (``replaced_by``), that is reported and nothing is tagged. A champion set otherwise (by hand,
    a rollback) is reported as not promoted by this gate, tags untouched. Writes the same outputs
    as a judged gate (gate.json, gate_report.md, reports/gate/), so `dvc repro` finds them all."""
    registry.load_version(challenger)  # its files are checked as for any gate: a tampered champion is refused (exit 2)
    tags = registry.require_version(challenger).tags or {}
    earlier_gate = tags.get("champion.how") == "gate"
    replaced = tags.get("champion.replaced")
    before = None if replaced in (None, "none") else replaced
    if replaced_by is not None:
        reason = (f"challenger v{challenger} was promoted by an earlier gate at {tags.get('champion.at', '?')} and "
                  f"has been replaced since (@champion is {_v(replaced_by)}); the gate did not judge it again")
        promoted, before, after = False, replaced_by, replaced_by
    elif earlier_gate:
        reason = (f"challenger v{challenger} is already @champion: an earlier gate promoted it at "
                  f"{tags.get('champion.at', '?')} ({tags.get('champion.reason', '')}); this try changes nothing")
        promoted, after = True, challenger
    else:
        reason = (f"challenger v{challenger} is already @champion ({tags.get('champion.how', 'set')} by "
                  f"{tags.get('champion.by', '?')}); the gate did not judge it")
        promoted, before, after = False, challenger, challenger
    entries = registry.alias_history()
    decision: dict[str, Any] = {
        "promoted": promoted, "reason": reason, "challenger_version": challenger, "champion_version_before": before,
        "champion_version_after": after, "rules": [], "recognised_earlier_promotion": earlier_gate,
        "alias_history": entries}
    if promoted and tags.get("gate.decision") != "promoted":
        registry.tag_version(challenger, {"gate.decision": "promoted", "gate.reason": reason[:5000]})
    write_json_atomic(args.reports / "gate.json", decision)
    verdict = "PROMOTED to @champion" if promoted else "not promoted"
    write_text_atomic(args.reports / "gate_report.md", "\n".join([
        f"# Gate report: hemorrhage-classifier v{challenger}", "", f"**Decision: {verdict}** - {reason}", "",
        *history_table(entries)]) + "\n")
    (args.reports / "gate").mkdir(parents=True, exist_ok=True)
    _finish(decision)
    return 0


def _finish(decision: dict[str, Any]) -> None:
    verdict = "PROMOTED to @champion" if decision["promoted"] else "NOT promoted"
    print(f"gate: challenger v{decision['challenger_version']} {verdict}: {decision['reason']}")
    after = decision["champion_version_after"]
    publish("gate", {**{key: decision[key] for key in ("promoted", "reason", "challenger_version",
                                                       "champion_version_before", "champion_version_after")},
                     "champion_model_after": registry.version_uri(after) if after else None})


def _write_decisions(folder: Path, versions: dict[str, str], served: dict[str, Any]) -> None:
    """Each model's per-slice decisions on the gate patients, in `hemo score`'s CSV format."""
    for role, result in served.items():
        rows = [[s.patient.dirname, path.name, *d[k].tolist()]
                for s, d in zip(result.scores, result.decisions()) for k, path in enumerate(s.patient.paths)]
        write_csv_atomic(folder / f"decisions_v{versions[role]}.csv", list(LABEL_COLUMNS), rows)


def gate_report(decision: dict[str, Any], versions: dict[str, str]) -> str:
    """The per-version gate report (Markdown): the policy, the gate's size, each rule with its
    interval, per-model metrics with intervals, provenance and the alias history."""
    policy = decision["policy"]
    level = f"{1 - 2 * policy['alpha']:.0%}"
    title = f"v{versions['challenger']}" + (f" vs champion v{versions['champion']}" if "champion" in versions
                                            else " (no champion yet)")
    positives = decision.get("positive_patients") or {}
    lines = [f"# Gate report: hemorrhage-classifier {title}", "",
             f"**Decision: {'PROMOTED to @champion' if decision['promoted'] else 'not promoted'}** - {decision['reason']}",
             "", "## Policy", "",
             f"Mode **{policy['mode']}**; one-sided level {policy['alpha']} (paired permutation test of the observed "
             f"micro-F2 gain{', alpha spent over decisions on this gate set' if policy['alpha_spending'] else ''}); "
             f"lower bounds at {policy['bound_alpha']}; min improvement {policy['min_improvement']}; margins over the "
             f"all-positive model {policy['margin_over_trivial']} (micro) and {policy['class_margin_over_trivial']} "
             f"(each class); class recall floor {policy['class_recall_floor']}; exam sensitivity floor "
             f"{policy['exam_sensitivity_floor']}; max class drop {policy['max_class_drop']}; non-inferiority margins "
             f"{policy['ni_margin']} / {policy['ni_class_margin']}; drift budget against @reference "
             f"{policy['drift_budget']} / {policy['drift_class_budget']} (docs/gate_policy.md).", "",
             "## Gate", "",
             f"{decision['gate_patients']} patients ({decision['gate_scans']} scans, {decision['gate_slices']} slices; "
             "the scans of one patient are judged and resampled together), held out from training, model "
             f"selection, threshold tuning and ablation; needs >= {policy['min_patients']}. Positive patients per class: "
             + ", ".join(f"{c} {k}" for c, k in positives.items())
             + f" (needs >= {policy['min_positive_patients']}). Scored as served: context "
             f"{decision['scoring']['context']}, {decision['scoring']['precision']}, each model's stored thresholds. "
             f"Gate set sha256 {decision['gate_set_sha256'][:16]}..., decision {decision['decision_number']} on it.",
             "", "## Rules", "", "| rule | outcome | detail |", "|---|---|---|"]
    lines += [f"| {r['name']} | {'pass (signed off)' if r.get('waived') else 'pass' if r['passed'] else 'FAIL'} "
              f"| {r['detail']} |" for r in decision["rules"]]
    models = decision["models"]
    lines += ["", f"## Models ({level} intervals: BCa for micro-F2, paired percentile bootstrap per class, "
              f"{policy['bootstrap']} resamples over patients, seed {policy['seed']})", "",
              "| model | micro-F2 | interval |", "|---|---|---|"]
    lines += [f"| {role} v{versions[role]} | {m['micro_f2']:.4f} | [{m['micro_f2_interval'][0]:.4f}, "
              f"{m['micro_f2_interval'][1]:.4f}] |" for role, m in models.items()]
    lines.append(f"| all-positive | {decision['all_positive_micro_f2']:.4f} | |")
    if decision["gain"] is not None:
        interval = decision["gain_interval"]
        lines.append(f"\nObserved micro-F2 gain over the champion {decision['gain']:+.4f}"
                     + (f", BCa {level} [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "")
                     + (f", permutation p = {decision['p_value']:.4f}" if decision["p_value"] is not None else "") + ".")
    header = "| class | positive slices | " + " | ".join(
        f"v{versions[role]} {metric}" for role in models for metric in ("F2", "precision", "recall")) + " |"
    lines += ["", header, "|" + "---|" * (2 + 3 * len(models))]
    for cls in CLASSES:
        cells = [f"{models['challenger']['per_class'][cls]['positives']:.0f}"]
        for m in models.values():
            v = m["per_class"][cls]
            cells += [f"{v[k]:.3f} [{v[k + '_low']:.3f}, {v[k + '_high']:.3f}]" for k in ("f2", "precision", "recall")]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    split = decision["split"]
    lines += ["", "## Provenance", "", f"- data md5 (data.dvc): {decision['data_md5']}",
              f"- split: salt {split['salt']!r}, val fraction {split['val_fraction']:.4f}, gate fraction "
              f"{split['gate_fraction']:.4f}"]
    for role, info in decision["provenance"].items():
        tuned = ("val patients not recorded (registered before they were)" if info.get("val_patients") is None
                 else f"tuned on {info['val_patients']} val patients (sha256 {info['val_patients_sha256']})")
        pixels = ("scan pixels not fingerprinted (a data set without series.csv, or registered before)"
                  if not info.get("scans_fingerprinted") else
                  f"{info['scans_fingerprinted']} scan fingerprints checked against {info['gate_scans_fingerprinted']} "
                  "gate scans")
        lines.append(f"- {role} v{versions[role]}: trained on {info['train_patients']} patients (patient-list sha256 "
                     f"{info['train_patients_sha256']}), {tuned}; none of them a gate patient; {pixels}, none the same")
    lines += ["", *history_table(decision.get("alias_history") or [])]
    return "\n".join(lines) + "\n"


def history_table(entries: list[dict[str, Any]]) -> list[str]:
    """The latest 20 alias moves as a Markdown section (both report kinds end with it)."""
    lines = ["## Alias history (latest 20)", "", "| # | alias | version | replaced | how | by | at | run |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {h.get('seq')} | @{h.get('alias')} | v{h.get('version')} | {_v(h.get('previous'))} | {h.get('how')} | "
              f"{h.get('by')} | {h.get('at')} | {h.get('run_id') or ''} |" for h in entries[-20:]]
    return lines if entries else [*lines, "| - | | | | | | | |"]


def _v(version: object) -> str:
    return f"v{version}" if version else "none"
