"""Stage 2: refine the stage-1 model with 5-slice context (loss on the weighted logit sum).

For a centre slice k the model scores k-2..k+2 separately; the loss is taken on
0.1 z(k-2) + 0.3 z(k-1) + 0.5 z(k) + 0.3 z(k+1) + 0.1 z(k+2). Adam at lr 1e-6, batch 12
(settings `refine`), same loss as stage 1, BatchNorm statistics frozen at stage 1's
(`refine.batchnorm`), so stage 2 starts from stage 1's behaviour. The epoch that moves on
follows `selection` (validation micro-F2 *with context* on the `val` role when it is big enough);
where that val role shows refinement no better than stage 1, the stage-1 weights move on instead.
A val role too small to tell keeps the method's refinement (and says so). Checkpoints hold the
per-slice network, so they load like stage-1 checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hemo_pipeline.services import tracking
from hemo_pipeline.services.devices import join_cluster
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.fit_reports import publish_fit
from hemo_pipeline.services.patient_roles import load_roles, provenance
from hemo_pipeline.services.resume import fingerprint, resume_from
from hemo_pipeline.services.stages import refine_filter, refine_learned
from hemo_pipeline.services.step_args import add_common_arguments, add_resume_argument, data_root, settings_from
from hemo_pipeline.services.training_setup import fit_roles, read_checkpoint


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


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args).override(
        "refine", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_steps=args.max_steps)

    slice_model, spec, payload = read_checkpoint(args.init, "hemo train")
    if spec.context != "filter":
        raise UserError(f"{args.init} already has a learned context ({spec.context}); refine a stage-1 "
                        "checkpoint of `hemo train`")
    cluster, device = join_cluster(args.device)  # torchrun: one process per GPU; rank 0 logs and saves
    roles = fit_roles(load_roles(data_root(args, settings), settings.split, need=("train", "val")), settings.train)
    seen = provenance(roles, settings.split, earlier=payload.get("provenance"))
    kind = settings.model.context
    current = fingerprint(settings, roles, "refine", args.init)
    last = resume_from(args.resume, args.out, current, "refine") if kind == "filter" else None
    if not cluster.is_main:  # other torchrun ranks share the method's refinement; a learned head is rank 0's alone
        if kind == "filter":
            refine_filter(settings, slice_model, spec, roles, seen, args.out, device, last, current, cluster)
        return 0
    with tracking.step_run("refine", settings, resume=last is not None):
        tracking.log_params_flat({"init": str(args.init)})
        if kind == "filter":
            history, summary = refine_filter(settings, slice_model, spec, roles, seen, args.out, device, last,
                                             current, cluster)
            title = "stage 2: 5-slice refinement"
        else:
            history, summary = refine_learned(settings, slice_model, spec, roles, seen, args.out, device)
            title = f"stage 2: learned {kind} context head on frozen embeddings"
        publish_fit("refine", history, summary, args.reports, title)
    print(f"refine ({kind}): val micro-F2 {summary['val_micro_f2_context_before']:.4f} -> "
          f"{summary['best_val_micro_f2_context']:.4f} with context (epoch {summary['best_epoch']}, selection "
          f"'{summary['selection']}'{'; ' + summary['kept_reason'] if 'kept_reason' in summary else ''}), "
          f"{summary['seconds']:.0f} s -> {args.out / 'best.pt'}")
    return 0
