"""Stage 1: train ResNet34 on single slices (ASL, Adam, StepLR) of the `train` role.

Reads settings `train`, `model`, `split`; flags override. Patients are assigned to roles by a
salted hash (`hemo split`): the `train` role is trained on, the `val` role chooses the epoch, the
`gate` role is never seen. The assignment is written to reports/split.json and the training
patients travel with every checkpoint (provenance for the gate). Checkpoints every epoch to --out
(last.pt with optimizer/scheduler/RNG state, best.pt by validation micro-F2); --resume continues an
interrupted run. Starts the pipeline's parent MLflow run and logs params, per-epoch metrics, the
learning curve and the best checkpoint. Writes reports/train.json and reports/train_history.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow

from hemo_pipeline.services import tracking
from hemo_pipeline.services.devices import join_cluster
from hemo_pipeline.services.fit_reports import publish_fit
from hemo_pipeline.services.patient_roles import load_roles, write_split_report
from hemo_pipeline.services.resume import fingerprint, resume_from
from hemo_pipeline.services.stages import train_stage1
from hemo_pipeline.services.step_args import add_common_arguments, add_resume_argument, data_root, settings_from
from hemo_pipeline.services.training_setup import fit_roles, pretrained_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("outputs/train"), help="checkpoint folder")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="metrics/curves folder")
    parser.add_argument("--epochs", type=int, help="train.epochs (method: 20)")
    parser.add_argument("--image-size", type=int, help="train.image_size (method: 512)")
    parser.add_argument("--batch-size", type=int, help="train.batch_size (method: 20)")
    parser.add_argument("--lr", type=float, help="train.lr (method: 1e-4)")
    parser.add_argument("--loss", choices=["asl", "bce"], help="train.loss (method: asl)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="train.precision")
    parser.add_argument("--max-steps", type=int, help="cap optimizer steps per epoch (smoke runs)")
    parser.add_argument("--seed", type=int, help="train.seed")
    add_resume_argument(parser)


def run(args: argparse.Namespace) -> int:

    settings = settings_from(args).override(
        "train", epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
        loss=args.loss, precision=args.precision, max_steps=args.max_steps, seed=args.seed)
    cluster, device = join_cluster(args.device)  # torchrun: one process per GPU; rank 0 logs and saves
    split = load_roles(data_root(args, settings), settings.split, need=("train", "val"))
    roles = fit_roles(split, settings.train)
    pretrained_path(settings.model)  # a missing weights file fails before anything starts
    current = fingerprint(settings, roles, "train")
    last = resume_from(args.resume, args.out, current, "train")
    if not cluster.is_main:  # the other torchrun ranks train their share; rank 0 runs, logs and saves
        train_stage1(settings, roles, args.out, device, resume_from=last, run_fingerprint=current, cluster=cluster)
        return 0
    write_split_report(args.reports / "split.json", split, settings.split)

    tracking.configure()
    tracking.start_pipeline_run(settings, resume=last is not None)
    with tracking.step_run("train", settings, resume=last is not None):
        mlflow.log_artifact(str(args.reports / "split.json"), artifact_path="provenance")
        stage = train_stage1(settings, roles, args.out, device, resume_from=last, run_fingerprint=current,
                             cluster=cluster)
        publish_fit("train", stage.result.history, stage.summary, args.reports, "stage 1: single-slice training")
        mlflow.log_artifact(str(args.out / "best.pt"), artifact_path="checkpoints")
    summary = stage.summary
    if summary["sampling"] != "uniform":
        shares = ", ".join(f"{c} {v['slices']:.3f} -> {v['drawn']:.3f}" for c, v in summary["class_share"].items())
        print(f"train: {summary['sampling']} sampling (t={settings.train.repeat_threshold}), share of draws "
              f"positive per class: {shares}")
    print(f"train: kept epoch {summary['best_epoch']} (selection '{summary['selection']}': "
          f"{summary['selection_reason']}), val micro-F2 (single slice) {summary['best_val_micro_f2_single']:.4f}, "
          f"{summary['seconds']:.0f} s -> {args.out / 'best.pt'}")
    return 0
