"""Render the README montage: one positive slice per hemorrhage type and negatives with distractors.

Run: `.venv/bin/python scripts/make_montage.py docs/montage.png`
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hemo_model import CLASSES  # noqa: E402
from hemo_model.data.synth import render_slice, sample_patient

NAMES = {"ich": "ICH (intracerebral)", "ivh": "IVH (intraventricular)", "sah": "SAH (subarachnoid)",
         "sdh": "SDH (subdural)", "edh": "EDH (epidural)"}


def find_positive(kind: str, seed: int = 0):
    for index in range(300):
        patient = sample_patient(seed, "train", index)
        lesion = next((lesion for lesion in patient.lesions if lesion.kind == kind), None)
        if lesion is not None:
            k = int(round(lesion.centre))
            render = render_slice(patient, k, 256)
            if render.labels[kind] and sum(render.labels.values()) == 1:
                return patient, k, render
    raise RuntimeError(kind)


def main(out: Path) -> None:
    fig, axes = plt.subplots(2, 5, figsize=(15, 7.4))
    for ax, kind in zip(axes[0], CLASSES):
        patient, k, render = find_positive(kind)
        ax.imshow(render.pixels, cmap="gray", vmin=0, vmax=255)
        ax.contour(render.masks[kind], levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(f"{NAMES[kind]}\n{patient.dirname} k={k}", fontsize=9)
    negatives = sample_patient(0, "train", 1)  # a patient without lesions
    assert not negatives.lesions
    n = negatives.n_slices
    for ax, k, note in zip(axes[1], (1, 3, n // 2 - 2, n // 2 + 4, n - 3),
                           ("skull base bone", "petrous ridges", "ventricles", "sulci", "vertex")):
        render = render_slice(negatives, k, 256)
        assert not any(render.labels.values())
        ax.imshow(render.pixels, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"negative: {note}\n{negatives.dirname} k={k}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("hemo synth: positives (top, lesion outlined in red only here) and negatives (bottom); brain window 40/80")
    fig.tight_layout(h_pad=2.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/montage.png"))
