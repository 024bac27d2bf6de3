"""Do the overlays a reader is shown point at the bleed? The pointing game on the gate patients
whose lesions are outlined (``data/masks``), for `hemo evaluate`'s report and MLflow.

The maps are the ones `hemo score --overlays` draws (:func:`hemo_pipeline.services.overlays.slice_saliency`:
occlusion sensitivity of the single-slice network), on the slices it draws them on: per exam and
type flagged at the served thresholds, the type's top evidence slices by the served probabilities
(``evaluate.pointing_slices`` of them; 1 is exactly the overlay). Each slice is scored again with
its lesion deleted, so the report tells a map that misses a lesion the flag rests on from a flag
that does not rest on the lesion at all. The game itself is :mod:`hemo_model.inference.pointing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hemo_model import CLASSES
from hemo_model.data.images import read_pixels
from hemo_model.data.lesion_masks import MASKS_DIR, outlined_patients, read_lesion_mask
from hemo_model.inference.calibrated import score_exam
from hemo_model.inference.pointing import (
    EvidenceSlice,
    PointingCase,
    evidence_to_check,
    hit_counts,
    lesion_reliance,
    play,
    pointing_tolerance,
)
from hemo_model.inference.triage import clopper_pearson
from hemo_model.metrics.classification import binarize
from hemo_model.model.spec import Calibration
from hemo_pipeline.services.overlays import SALIENCY_METHOD, slice_saliency


def pointing_report(model: Any, gate_scores: Sequence[Any], use_context: bool, thresholds: Sequence[float],
                    single_thresholds: Sequence[float], calibration: Calibration | None, root: Path,
                    per_class: int, device: torch.device, progress: bool = True
                    ) -> tuple[dict[str, Any], list[tuple[EvidenceSlice, np.ndarray, PointingCase]]]:
    """(the report, a few checked maps to draw: one per class, the first of each). Slices are picked
    by the served flags (``thresholds``, the served mode); the deletion check uses the single-slice
    network's ``single_thresholds``, the network the map explains. The report says why it is empty
    where it is: off (``per_class`` 0), no outlined gate patient, nothing flagged."""
    size = model.image_size
    tolerance = pointing_tolerance(size)
    base: dict[str, Any] = {"method": SALIENCY_METHOD, "tolerance_px": tolerance, "image_size": size,
                            "slices_per_exam_and_type": per_class}
    if per_class <= 0:
        return {**base, "status": "off (evaluate.pointing_slices 0)"}, []
    outlined = outlined_patients(root)
    scored = [s for s in gate_scores if s.patient.dirname in outlined]
    if not scored:
        return {**base, "status": f"no gate patient has outlined lesions (no {root / MASKS_DIR}/ID_<hash> folder; "
                                  "hemo synth writes the phantom's)"}, []
    todo: list[tuple[Any, EvidenceSlice]] = []
    off_lesion = {name: 0 for name in CLASSES}
    for s in scored:
        logits = s.logits if use_context else s.slice_logits
        flags = binarize(1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64))), thresholds).astype(bool)
        exam = score_exam(logits, calibration, per_class)
        paths = s.patient.paths

        def lesion(k: int, dirname: str = s.patient.dirname, names: list = paths) -> np.ndarray:
            return read_lesion_mask(root, dirname, names[k].name, size)

        checked, missed = evidence_to_check(s.patient.dirname, flags, exam.evidence, lesion, per_class)
        todo += [(s.patient, item) for item in checked]
        for _, c in missed:
            off_lesion[CLASSES[c]] += 1
    module = model.module.to(device)
    items = [item for _, item in todo]
    slice_paths = {id(item): patient.paths[item.slice_index] for patient, item in todo}
    maps: dict[int, np.ndarray] = {}
    with tqdm(total=len(items), desc="pointing game", unit="map", disable=not progress) as bar:

        def saliency(item: EvidenceSlice) -> np.ndarray:
            maps[id(item)] = slice_saliency(model, module, slice_paths[id(item)], item.class_index, device)
            bar.update()
            return maps[id(item)]

        def reliance(item: EvidenceSlice) -> tuple[float, float]:
            image = torch.from_numpy(np.array(read_pixels(slice_paths[id(item)], size, model.channels)))
            return lesion_reliance(module, image, item.lesion, item.class_index, device)

        cases = play(items, saliency, tolerance, reliance, single_thresholds)
    table = hit_counts(cases)
    per_class_rows = {}
    for name, row in table.items():
        n, hits, resting, hits_resting = row["maps"], row["hits"], row["rest_on_lesion"], row["hits_resting"]
        per_class_rows[name] = {**row, "off_lesion": off_lesion[name],
                                "hit_rate": hits / n if n else float("nan"),
                                "hit_rate_interval": list(clopper_pearson(hits, n)),
                                "rest_on_lesion_rate": resting / row["flagged_alone"] if row["flagged_alone"] else
                                float("nan"),
                                "rest_on_lesion_interval": list(clopper_pearson(resting, row["flagged_alone"])),
                                "hit_rate_resting": hits_resting / resting if resting else float("nan"),
                                "hit_rate_resting_interval": list(clopper_pearson(hits_resting, resting)),
                                "mean_probability_before": _mean([c.before for c in cases if CLASSES[c.class_index] == name]),
                                "mean_probability_deleted": _mean([c.after for c in cases if CLASSES[c.class_index] == name])}
    examples = _first_per_class(items, cases, maps)
    report = {**base, "status": "played", "outlined_gate_patients": len(scored), "classes": per_class_rows}
    return report, [(item, maps[id(item)], case) for item, case in examples]


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else float("nan")


def _first_per_class(items: Sequence[EvidenceSlice], cases: Sequence[PointingCase],
                     maps: dict[int, np.ndarray]) -> list[tuple[EvidenceSlice, PointingCase]]:
    seen: set[int] = set()
    first = []
    for item, case in zip(items, cases, strict=True):
        if item.class_index not in seen and id(item) in maps:
            seen.add(item.class_index)
            first.append((item, case))
    return first


def pointing_lines(report: dict[str, Any]) -> list[str]:
    """Lines for the step's output: one per class with a map checked, or why there is none."""
    if report.get("status") != "played":
        return [f"pointing game: {report['status']}"]
    head = (f"pointing game on {report['outlined_gate_patients']} outlined gate patients ({report['method']}, "
            f"top {report['slices_per_exam_and_type']} evidence slice(s) per exam and flagged type; hit = the map's "
            f"maximum within {report['tolerance_px']:.1f} px of the lesion; the lesion then deleted)")
    lines = [head]
    for name, row in report["classes"].items():
        if not row["maps"] and row["off_lesion"]:
            lines.append(f"  {name}: no map: none of its {row['off_lesion']} flagged evidence slice(s) shows a {name} "
                         "lesion")
        elif row["maps"]:
            lines.append(f"  {name}: {_rate(row['hits'], row['maps'], row['hit_rate_interval'])} "
                         f"({row['exact_hits']} on the lesion itself); flags resting on the lesion "
                         f"{_rate(row['rest_on_lesion'], row['flagged_alone'], row['rest_on_lesion_interval'])} "
                         f"(p {row['mean_probability_before']:.3f} -> {row['mean_probability_deleted']:.3f} deleted), "
                         f"hits among them {_rate(row['hits_resting'], row['rest_on_lesion'], row['hit_rate_resting_interval'])}"
                         + (f"; {row['off_lesion']} flagged evidence slice(s) without a {name} lesion"
                            if row["off_lesion"] else ""))
    if len(lines) == 1:
        lines.append("  no flagged evidence slice shows an outlined lesion")
    return lines


def _rate(k: int, n: int, interval: Sequence[float]) -> str:
    if not n:
        return "n/a"
    return f"{k}/{n} = {k / n:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def pointing_markdown(report: dict[str, Any]) -> list[str]:
    """The triage report's section."""
    lines = ["## Do the overlays point at the bleed? (pointing game, gate patients)", ""]
    if report.get("status") != "played":
        return lines + [f"Not played: {report['status']}.", ""]
    lines += [f"On the {report['outlined_gate_patients']} gate patients with outlined lesions, the saliency map "
              f"`hemo score --overlays` draws ({report['method']}) on each flagged type's top "
              f"{report['slices_per_exam_and_type']} evidence slice(s) is a hit when its maximum lies within "
              f"{report['tolerance_px']:.1f} px of the type's lesion (the pointing game's 15 px at 224 px). Each slice "
              "is scored again with its lesion deleted (filled with the tissue around it): a flag of the single-slice "
              "network that then falls below its threshold rests on the lesion; one that stands rests on something "
              "else, and a faithful map points there instead. 95 % Clopper-Pearson intervals.", "",
              "| type | maps | hit rate | on the lesion itself | flags resting on the lesion | hit rate among them "
              "| p before -> lesion deleted | flagged evidence without the lesion |",
              "|---|---|---|---|---|---|---|---|"]
    for name, row in report["classes"].items():
        if not (row["maps"] or row["off_lesion"]):
            continue
        lines.append(f"| {name} | {row['maps']} | {_rate(row['hits'], row['maps'], row['hit_rate_interval'])} "
                     f"| {row['exact_hits']} "
                     f"| {_rate(row['rest_on_lesion'], row['flagged_alone'], row['rest_on_lesion_interval'])} "
                     f"| {_rate(row['hits_resting'], row['rest_on_lesion'], row['hit_rate_resting_interval'])} "
                     + (f"| {row['mean_probability_before']:.3f} -> {row['mean_probability_deleted']:.3f} "
                        if row["maps"] else "| n/a ")
                     + f"| {row['off_lesion']} |")
    drawn = any(row["maps"] for row in report["classes"].values())
    return lines + (["", "![pointing](plots/pointing.png)", ""] if drawn else ["", "No map was checked.", ""])


def pointing_metrics(report: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: hit rate and number of maps per class that had any."""
    if report.get("status") != "played":
        return {}
    out = {}
    for name, row in report["classes"].items():
        if row["maps"]:
            out[f"pointing_hit_rate_{name}"] = float(row["hit_rate"])
            out[f"pointing_maps_{name}"] = float(row["maps"])
        if row["flagged_alone"]:
            out[f"pointing_rest_on_lesion_rate_{name}"] = float(row["rest_on_lesion_rate"])
        if row["rest_on_lesion"]:
            out[f"pointing_hit_rate_resting_{name}"] = float(row["hit_rate_resting"])
    return out


def pointing_figure(model: Any, gate_scores: Sequence[Any],
                    examples: Sequence[tuple[EvidenceSlice, np.ndarray, PointingCase]]) -> Any | None:
    """One panel per class: the first checked map over its slice, the lesion outlined, the peak marked."""
    if not examples:
        return None
    from hemo_model.data.images import read_pixels
    from hemo_pipeline.services.plots import plt

    paths = {s.patient.dirname: s.patient.paths for s in gate_scores}
    fig, axes = plt.subplots(1, len(examples), figsize=(3.3 * len(examples), 3.6), squeeze=False)
    for ax, (item, heat, case) in zip(axes[0], examples):
        pixels = read_pixels(paths[item.exam][item.slice_index], model.image_size, model.channels)[0]
        ax.imshow(pixels, cmap="gray")
        ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
        ax.contour(item.lesion, levels=[0.5], colors="white", linewidths=1)
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        ax.plot(x, y, "w+", markersize=12)
        rests = {True: "the flag rests on the lesion", False: "the flag stands without the lesion", None: ""}
        ax.set_title(f"{CLASSES[item.class_index]}: {'hit' if case.hit else 'miss'}; {rests[case.rests_on_lesion]}\n"
                     f"{item.exam} slice {item.slice_index}", fontsize=8)
        ax.axis("off")
    fig.text(0.5, 0.01, "gate patients; lesion outlined in white, the map's maximum marked +; not for diagnosis",
             ha="center", fontsize=7)
    return fig
