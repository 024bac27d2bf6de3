"""The command-line pieces every step shares: --params/--set, --data, --device, --resume, and the
settings they resolve to (params.yaml, then --set, then the step's own flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hemo_model.data import images
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.settings import (
    Settings,
    load_settings,
)

RESUME_MODES = ("auto", "always", "never")
"""--resume: continue last.pt if it was made alike (auto), must continue (always), start over (never)."""


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, help="params file (default: ./params.yaml if present)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                        help="override one setting of the params file, e.g. --set train.epochs=3 (repeatable)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data folder in DLCV layout (params data.root)")
    add_settings_arguments(parser)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (auto: cuda when available)")


def settings_from(args: argparse.Namespace) -> Settings:
    """params.yaml (or --params) with the --set overrides applied; steps then apply their flags.
    Also sets the slice pixel budget (data.max_image_size) for every image this process reads."""
    settings = load_settings(args.params).with_sets(getattr(args, "set", None))
    images.configure(settings.data.max_image_size)
    return settings


def data_root(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.data) if getattr(args, "data", None) else Path(settings.data.root)


def add_resume_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", nargs="?", const="always", default="auto", choices=RESUME_MODES,
                        help="auto (default): continue --out/last.pt when it was made with the same settings, data "
                             "and code, else start fresh if that run had finished; always (bare --resume): must "
                             "continue; never: start over")


def reason_of(args: argparse.Namespace) -> str:
    reason = (args.reason or "").strip()
    if not reason:
        raise UserError("--reason must say why the registry is changed by hand (it is kept on the version)")
    return reason
