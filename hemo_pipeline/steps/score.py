"""Batch scoring: predict every slice of every patient in a folder with the champion model.

--model defaults to models:/hemorrhage-classifier@champion (the registry is the hand-off
between training and serving), resolved to a version once; a local checkpoint path also works.
Several --model give an ensemble: the models' logits are averaged before the context (the
method's 3-model ensemble), each slice decoded once; <out>_models.json names the versions used.
Writes the DLCV CSV (dirname,ID,ich,ivh,sah,sdh,edh with 0/1 at the model's stored thresholds for
the scoring mode), the leaderboard long form (ID,prediction with <hash>_<k>_<cls>) as
<out>_leaderboard.csv and the probabilities as <out>_probabilities.csv, all atomically (temp file +
rename), and logs the model version used.

Per exam (series, one patient folder), --exams (default: exams.csv beside the default --out,
<stem>_exams.csv beside any other) holds one row: the
probability of any hemorrhage and of each type (max over slices), the triage bin (low_risk, defer,
high_risk) and the evidence slices (the score.evidence_slices most suspicious slice files for any
and per type, most suspicious first). Where the version carries the calibration `hemo evaluate`
fitted on val (its spec) and it applies to these scores, the slice and exam probabilities are the
calibrated ones and the bin follows the stored conformal cut-offs; otherwise the probabilities are
the network's, every exam is deferred and the line says why. Decisions (the 0/1 flags) are the
same either way: <out>_models.json gives the thresholds on raw and on calibrated probabilities.

--format rsna also writes the RSNA Intracranial Hemorrhage Detection submission as
<out>_rsna.csv (ID,Label with ID_<SOPInstanceUID>_<type>, six types, any = max of the five
probabilities), naming each slice's image through the local --mapping file that `hemo import-dicom
--mapping` wrote. That file holds DICOM UIDs, so it is never logged to MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import numpy as np

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_model.data import images
from hemo_model.data.layout import DataError
from hemo_model.data.patients import load_folder
from hemo_model.data.rsna import read_mapping, submission_rows
from hemo_model.inference.calibrated import score_exam, slice_probabilities
from hemo_model.inference.calibration import calibrated_thresholds
from hemo_model.inference.triage import DEFER, HIGH, LOW
from hemo_pipeline.services import registry, tracking
from hemo_pipeline.services.devices import resolve_device
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_csv_atomic, write_json_atomic
from hemo_pipeline.services.overlays import write_overlays
from hemo_pipeline.services.results import publish
from hemo_pipeline.services.score_files import DEFAULT_MODEL, EXAM_CSV_COLUMNS, exams_file, shard_out, shard_spec, sibling
from hemo_pipeline.services.serving import serve
from hemo_pipeline.services.step_args import add_settings_arguments, settings_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None,
                        help=f"registry URI or checkpoint (default {DEFAULT_MODEL}); repeat for an ensemble")
    parser.add_argument("--data", type=Path, default=Path("data/test"), help="folder of ID_<hash>/ patient folders")
    parser.add_argument("--out", type=Path, default=Path("outputs/predictions.csv"), help="DLCV-format CSV to write")
    parser.add_argument("--exams", type=Path, help="per-exam CSV to write (default: exams.csv beside the default "
                                                   "--out, <stem>_exams.csv beside any other)")
    parser.add_argument("--context", type=int, choices=[1, 5], help="5-slice context or single slice (score.context)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="score.precision")
    parser.add_argument("--batch-size", type=int, help="score.batch_size")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overlays", type=Path, metavar="DIR",
                        help="write a saliency overlay (occlusion sensitivity) of each exam's top evidence slice per "
                             "flagged type as DIR/<exam>_<type>.png and log them to MLflow (one forward pass per "
                             "square: seconds per slice on a CPU)")
    parser.add_argument("--format", choices=["dlcv", "rsna"], default="dlcv",
                        help="rsna: also write <out>_rsna.csv, the RSNA submission (needs --mapping)")
    parser.add_argument("--mapping", type=Path, help="with --format rsna: the mapping file of `hemo import-dicom`")
    parser.add_argument("--shard", type=shard_spec, metavar="I/N",
                        help="score only shard I of N (patients I, I+N, ... in folder order) into <out>.shard-I-of-N "
                             "files; `hemo merge-scores` joins them; pass one --model version to every shard")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:

    settings = settings_from(args).override(
        "score", context=args.context, precision=args.precision, batch_size=args.batch_size)
    cfg = settings.score
    try:
        patients = load_folder(args.data, data_root=Path(settings.data.root))  # data/test linked out: refused
        for patient in patients:  # every header checked before any model work (a bad file fails fast)
            for path in patient.paths:
                images.inspect(path)
        images_of = _rsna_images(args, patients)
    except DataError as exc:
        raise UserError(str(exc)) from exc
    out, exams_out = args.out, args.exams or exams_file(args.out)
    written = {args.out, *(sibling(args.out, k) for k in ("leaderboard", "probabilities", "rsna")),
               args.out.with_name(f"{args.out.stem}_models.json")}
    if exams_out in written:
        raise UserError(f"--exams {exams_out} is one of the files --out {args.out} writes; name another file")
    if args.shard is not None:
        index, count = args.shard
        patients = patients[index::count]  # folder order: each patient in exactly one shard
        out, exams_out = shard_out(args.out, index, count), shard_out(exams_out, index, count)
        if not patients:
            raise UserError(f"shard {index}/{count} of {args.data} holds no patient; use fewer shards")
    uris = args.model or [DEFAULT_MODEL]
    models = [registry.load_model(uri) for uri in uris]  # each fails with a clear message before anything is written
    loaded = models[0]
    device = resolve_device(args.device)
    served = serve(models, patients, cfg, device, settings.data.loader_workers(device.type), progress=True)
    used = [{"uri": uri, "version": m.version, "source": m.source} for uri, m in zip(uris, models)]

    labels_rows: list[list] = []
    long_rows: list[list] = []
    prob_rows: list[list] = []
    exam_rows: list[list] = []
    overlays: list[Path] = []
    for s, predicted in zip(served.scores, served.decisions()):
        probs = slice_probabilities(s.logits, served.calibration)
        exam = score_exam(s.logits, served.calibration, cfg.evidence_slices)
        names = [path.name for path in s.patient.paths]
        exam_rows.append([s.patient.dirname, len(names), *np.round(exam.probabilities, 6).tolist(), exam.bin,
                          int(served.calibration is not None),
                          *(";".join(names[k] for k in slices) for slices in (exam.evidence[-1], *exam.evidence[:-1]))])
        if args.overlays is not None:
            overlays += write_overlays(args.overlays, models, s.patient, predicted, exam.evidence, device)
        for k, path in enumerate(s.patient.paths):
            labels_rows.append([s.patient.dirname, path.name, *predicted[k].tolist()])
            prob_rows.append([s.patient.dirname, path.name, *np.round(probs[k], 6).tolist()])
            long_rows.extend([f"{path.stem}_{c}", int(predicted[k, i])] for i, c in enumerate(CLASSES))
    write_csv_atomic(out, list(LABEL_COLUMNS), labels_rows)
    write_csv_atomic(sibling(out, "leaderboard"), ["ID", "prediction"], long_rows)
    write_csv_atomic(sibling(out, "probabilities"), list(LABEL_COLUMNS), prob_rows)
    write_csv_atomic(exams_out, list(EXAM_CSV_COLUMNS), exam_rows)
    calibration = served.calibration
    write_json_atomic(out.with_name(f"{out.stem}_models.json"),
                      {"models": used, "ensemble": len(models) > 1, "context": cfg.context,
                       "thresholds": served.thresholds, "precision": cfg.precision,
                       "calibrated": calibration is not None,
                       "thresholds_calibrated": None if calibration is None else calibrated_thresholds(
                           served.thresholds, calibration.slice_temperatures, calibration.slice_shifts),
                       "triage": None if calibration is None else {
                           "low_risk_below": calibration.low_risk_below, "high_risk_above": calibration.high_risk_above,
                           "low_risk_target": calibration.low_risk_target,
                           "high_risk_target": calibration.high_risk_target}})
    if images_of is not None:
        probabilities = np.concatenate([slice_probabilities(s.logits, calibration) for s in served.scores])
        sops = [images_of[(s.patient.dirname, path.name)] for s in served.scores for path in s.patient.paths]
        rows = submission_rows(sops, probabilities)
        write_csv_atomic(sibling(out, "rsna"), ["ID", "Label"], ([i, round(p, 6)] for i, p in rows))

    triage_column = EXAM_CSV_COLUMNS.index("triage")
    bins = {b: sum(row[triage_column] == b for row in exam_rows) for b in (LOW, DEFER, HIGH)}
    with tracking.step_run("score", settings):
        tracking.log_params_flat({"score": settings.to_dict()["score"]})
        mlflow.log_params({"model_uri": ",".join(uris),
                           "model_version": ",".join(m.version or "checkpoint" for m in models),
                           "thresholds": ",".join(f"{t:g}" for t in served.thresholds),
                           "data": str(args.data), "n_patients": len(patients), "n_slices": len(labels_rows)})
        positive_rate = np.mean([r[2:] for r in labels_rows], axis=0)
        mlflow.log_metrics({f"predicted_rate_{c}": float(v) for c, v in zip(CLASSES, positive_rate)})
        mlflow.log_metrics({f"exams_{b}": float(n) for b, n in bins.items()})
        mlflow.log_param("calibrated", calibration is not None)
        mlflow.log_artifact(str(out), artifact_path="predictions")
        mlflow.log_artifact(str(exams_out), artifact_path="predictions")
        for overlay in overlays:
            mlflow.log_artifact(str(overlay), artifact_path="overlays")
    publish("score", {"model_version": loaded.version, "model_versions": [m.version for m in models],
                      "slices": len(labels_rows), "patients": len(patients)})
    version = ", ".join(f"{uri} v{m.version}" if m.version else uri for uri, m in zip(uris, models))
    print(f"score: {len(labels_rows)} slices of {len(patients)} patients with {version} "
          f"(context {cfg.context}, {cfg.precision}) -> {out}, {sibling(out, 'leaderboard')}"
          + (f", {sibling(out, 'rsna')} (RSNA submission)" if images_of is not None else ""))
    print(f"score: {len(exam_rows)} exams -> {exams_out}: " + ", ".join(f"{n} {b}" for b, n in bins.items())
          + (" (calibrated, triage cut-offs of the version)" if calibration is not None else
             f" (not calibrated: {served.uncalibrated_reason}; every exam deferred)"))
    if args.overlays is not None:
        print(f"score: {len(overlays)} saliency overlays (occlusion sensitivity) -> {args.overlays}")
    return 0


def _rsna_images(args: argparse.Namespace, patients: list) -> dict[tuple[str, str], str] | None:
    """(patient folder, slice file) -> SOPInstanceUID for every slice to score (None unless
    --format rsna), checked before the model is loaded. Messages name slices by pipeline names only."""
    if args.format != "rsna":
        if args.mapping is not None:
            raise UserError("--mapping is used by --format rsna only; add --format rsna or drop --mapping")
        return None
    if args.mapping is None:
        raise UserError("--format rsna needs --mapping FILE, the mapping written by `hemo import-dicom --mapping`")
    mapping = read_mapping(args.mapping)
    images = {}
    for patient in patients:
        for path in patient.paths:
            row = mapping.get((patient.dirname, path.name))
            if row is None:
                raise UserError(f"{patient.dirname}/{path.name} is not in the mapping file {args.mapping}; pass the "
                                "mapping written when this data was imported (RSNA IDs come from the DICOM files)")
            images[(patient.dirname, path.name)] = row["SOPInstanceUID"]
    return images
