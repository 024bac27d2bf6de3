"""Benchmark: does the saliency map point at the bleed? Grad-CAM's pointing game on phantom
patients, whose lesion masks the generator knows.

For every slice of --patients fresh phantom patients (phantom seed --seed, never used to train) the
model scores the slice on its own (single-slice logits: the network a saliency map explains); for each
class the slice truly shows and the model flags (probability >= the version's single-slice threshold)
a map is drawn by each --methods: Grad-CAM at HemoNet's last ResNet stage (--layer layer3: the one
before, twice as fine) and occlusion sensitivity (squares of 1/8 of the image whose hyperdense soft
tissue is lowered to the median soft tissue, as the overlays draw it; occlusion-soft fills every soft
tissue pixel of a square, as maps were drawn before, for a side-by-side comparison).
The map's maximum either falls inside the class's lesion mask (a hit) or not. The hit rate per class
comes with its count and a 95 % Clopper-Pearson interval, exactly (tolerance 0 px) and within the
pointing game's tolerance (15 px at 224 px, Zhang et al. 2016, scaled to the image size). Each
flagged slice is also scored with its lesion deleted (hemo_model.inference.pointing.delete_lesion):
a flag that then falls below its threshold rests on the lesion, and the hit rate among those flags
says how well the map finds a lesion the model does use. --top N keeps each patient's N most
confident flagged slices per class among those that show the lesion (`hemo evaluate`'s game takes
the top evidence slices whether or not they show it, and counts those apart). Lesions are the
labelled ones, as `hemo synth` writes them to data/masks. --overlays
DIR writes PNG overlays (slice, map, lesion outline) of the most confident flagged slice per class.

Run: `.venv/bin/python benchmarks/saliency_pointing.py --model outputs/refine/best.pt --overlays reports/saliency`
CPU (2-core Xeon): about a minute for 12 patients at 128 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_line  # noqa: E402

from hemo_model import CLASSES  # noqa: E402
from hemo_model.data.images import read_slice  # noqa: E402
from hemo_model.data.lesion_masks import resize_planes  # noqa: E402
from hemo_model.data.synth import _write_jpeg as write_jpeg  # noqa: E402
from hemo_model.data.synth import render_slice, sample_patient  # noqa: E402
from hemo_model.data.transforms import to_model_input  # noqa: E402
from hemo_model.inference.pointing import lesion_reliance, pointing_tolerance  # noqa: E402
from hemo_model.inference.saliency import grad_cam, occlusion_map, pointing_hit  # noqa: E402
from hemo_model.inference.triage import clopper_pearson  # noqa: E402
from hemo_model.model.storage import load_checkpoint  # noqa: E402

METHODS = {"gradcam": "Grad-CAM at --layer",
           "occlusion": "occlusion sensitivity (hemo_model.inference.saliency), as the overlays draw it: hyperdense soft "
                        "tissue lowered to the median",
           "occlusion-soft": "occlusion sensitivity with every soft tissue pixel of a square filled (the maps before)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("outputs/refine/best.pt"), help="a checkpoint")
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=9001, help="phantom seed (the demo trains on 0)")
    parser.add_argument("--render-size", type=int, default=256, help="phantom slice size on disk (synth.image_size)")
    parser.add_argument("--overlays", type=Path, help="folder for PNG overlays, one per class")
    parser.add_argument("--layer", choices=["layer3", "layer4"], default="layer4",
                        help="ResNet stage Grad-CAM explains (layer4: size/32 cells, layer3: size/16)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--top", type=int, default=0,
                        help="per patient and class, only the N most confident flagged slices (0: all)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    model, spec, _ = load_checkpoint(args.model)
    if spec.input != "gray":
        raise SystemExit(f"{args.model}: input {spec.input!r}; this benchmark renders gray phantom slices only")
    model.eval()
    device = torch.device("cpu")
    size, thresholds = spec.image_size, spec.thresholds_for(1)
    tolerance = pointing_tolerance(size)  # the pointing game's 15 px at 224 px (Zhang et al., 2016), scaled
    print(machine_line())
    print(f"settings: {args.model} ({spec.head} head, {size}px), {args.patients} phantom patients (seed {args.seed}), "
          f"single-slice thresholds {[round(t, 3) for t in thresholds]}, Grad-CAM at {args.layer} "
          f"({size // (32 if args.layer == 'layer4' else 16)}^2 cells), tolerance 0 and {tolerance:.1f} px")
    patch, stride = max(size // 8, 4), max(size // 16, 2)
    hits: dict[tuple[str, str], list[tuple[bool, bool, bool]]] = {(m, c): [] for m in args.methods for c in CLASSES}
    positives = {c: 0 for c in CLASSES}
    best: dict[tuple[str, str], tuple[float, np.ndarray, np.ndarray, np.ndarray]] = {}
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="pointing-")) / "slice.jpg"
    for index in range(args.patients):
        patient = sample_patient(args.seed, "test", index)
        renders = [render_slice(patient, k, args.render_size) for k in range(patient.n_slices)]
        images = torch.from_numpy(np.stack([_as_read(r.pixels, size, scratch) for r in renders]))[:, None]
        masks = [{c: _mask_at(r.masks[c] & bool(r.labels[c]), size) for c in CLASSES} for r in renders]
        with torch.no_grad():
            probs = torch.sigmoid(model(to_model_input(images, device)).float()).numpy()
        for c_index, c in enumerate(CLASSES):
            shown = [k for k, m in enumerate(masks) if m[c].any()]
            positives[c] += len(shown)
            flagged = sorted((k for k in shown if probs[k, c_index] >= thresholds[c_index]),
                             key=lambda k: -probs[k, c_index])[:args.top or None]
            if not flagged:
                continue
            rests_on_lesion = {}  # the flag falls below the threshold once the lesion is deleted
            for k in flagged:
                _, after = lesion_reliance(model, images[k], masks[k][c], c_index, device)
                rests_on_lesion[k] = after < thresholds[c_index]
            for method in args.methods:
                if method == "gradcam":
                    maps = list(grad_cam(model, getattr(model.backbone, args.layer),
                                         to_model_input(images[flagged], device), [c_index])[0])
                else:
                    lower = "soft_tissue" if method == "occlusion-soft" else "hyperdense"
                    maps = [occlusion_map(model, images[k], c_index, device, patch, stride, lower=lower) for k in flagged]
                for k, saliency in zip(flagged, maps):
                    mask = masks[k][c]
                    hits[method, c].append((bool(pointing_hit(saliency, mask)),
                                            bool(pointing_hit(saliency, mask, tolerance)), rests_on_lesion[k]))
                    if args.overlays is not None and probs[k, c_index] > best.get((method, c), (-1.0,))[0]:
                        best[method, c] = (float(probs[k, c_index]), images[k, 0].numpy(), saliency, mask)
    print(f"{args.patients} patients in {time.perf_counter() - started:.0f} s\n")
    print(f"occlusion: {patch} px squares every {stride} px, lowered to the slice's median soft tissue: hyperdense "
          "soft tissue (occlusion) or all soft tissue (occlusion-soft); air and bone kept\n")
    print(f"{'method':14} {'class':6} {'positive slices':>15} {'flagged':>8} {'hit (0 px)':>28} "
          f"{'hit (15 px at 224)':>28} {'rest on the lesion':>28} {'hit among them':>28}")
    for method, c in hits:
        cases = hits[method, c]
        resting = [h for h in cases if h[2]]
        rows = [_rate(sum(h[0] for h in cases), len(cases)), _rate(sum(h[1] for h in cases), len(cases)),
                _rate(len(resting), len(cases)), _rate(sum(h[1] for h in resting), len(resting))]
        print(f"{method:14} {c:6} {positives[c]:>15} {len(cases):>8} " + " ".join(f"{r:>28}" for r in rows))
    if args.overlays is not None:
        _write_overlays(args.overlays, best)


def _rate(k: int, n: int) -> str:
    if not n:
        return "n/a"
    low, high = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.3f} [{low:.3f}, {high:.3f}]"


def _as_read(pixels: np.ndarray, size: int, scratch: Path) -> np.ndarray:
    """The slice as the pipeline reads it: written as the phantom's JPEG, read through the one input
    path (decode, resize to the model's size)."""
    write_jpeg(scratch, pixels)
    return read_slice(scratch, size)


def _mask_at(mask: np.ndarray, size: int) -> np.ndarray:
    """A lesion mask at the model's image size, resized as `hemo evaluate` reads data/masks."""
    return resize_planes(mask[None], size)[0]


def _write_overlays(folder: Path, best: dict[tuple[str, str], tuple[float, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for (method, c), (p, pixels, saliency, mask) in best.items():
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(pixels, cmap="gray")
        ax.imshow(saliency, cmap="jet", alpha=0.35)
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1)
        y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
        ax.plot(x, y, "w+", markersize=12)
        ax.set_title(f"{c}: p = {p:.2f}; {method}, lesion outlined")
        ax.axis("off")
        fig.savefig(folder / f"{method}_{c}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    print(f"overlays: {', '.join(str(folder / f'{m}_{c}.png') for m, c in best)}")


if __name__ == "__main__":
    main()
