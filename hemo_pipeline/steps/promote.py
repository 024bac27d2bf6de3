"""Promote a registered version to @champion by hand, with a reason (an audited override).

Moves `@champion` to --version N and keeps the replaced champion as `@previous`; tags the new
champion with who (HEMO_USER, else the login name), when and why. Use it when the gate cannot
decide for you (e.g. after changing the split, or to ship a hotfix); the gate's own promotions
carry the same tags with `champion.how = gate`.
"""

from __future__ import annotations

import argparse

from hemo_pipeline.services import registry
from hemo_pipeline.services.step_args import reason_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="the registered version to make the champion")
    parser.add_argument("--reason", required=True, help="why (kept on the version as champion.reason)")


def run(args: argparse.Namespace) -> int:
    reason = reason_of(args)
    version = str(args.version)
    registry.require_version(version)
    before = registry.alias_version(registry.CHAMPION)
    if before == version:
        print(f"promote: v{version} is already @{registry.CHAMPION}; nothing changed")
        return 0
    registry.move_champion(version, before, how="manual", reason=reason)
    print(f"promote: @{registry.CHAMPION} v{before or 'none'} -> v{version} by {registry.who()} ({reason})"
          + (f"; @{registry.PREVIOUS} is v{before}" if before else ""))
    return 0
