"""Promote a registered version to @champion by hand, with a reason (an audited override).

Moves `@champion` to --version N and keeps the replaced champion as `@previous`; tags the new
champion with who (HEMO_USER, else the login name), when and why. Use it when the gate cannot
decide for you (e.g. after changing the split, or to ship a hotfix); the gate's own promotions
carry the same tags with `champion.how = gate`.

With --reference it sets `@reference` instead (the approved version a non-inferiority chain is
measured against; the only way to set it) and tags the version with reference.by/at/reason.

Both take the promotion lease (hemo_pipeline/services/champion_lease.py; waits up to
HEMO_LEASE_WAIT_S seconds, default 120, for a concurrent gate, then exit 3) and append one entry to
the registry's alias history.
"""

from __future__ import annotations

import argparse

from hemo_pipeline.services import registry
from hemo_pipeline.services.step_args import reason_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="the registered version to make the champion")
    parser.add_argument("--reason", required=True, help="why (kept on the version as champion.reason)")
    parser.add_argument("--reference", action="store_true",
                        help=f"set @{registry.REFERENCE} (the approved anchor of the drift budget) instead of "
                             f"@{registry.CHAMPION}")


def run(args: argparse.Namespace) -> int:
    reason = reason_of(args)
    version = str(args.version)
    registry.require_version(version)
    if args.reference:
        return _reference(version, reason)
    before = registry.alias_version(registry.CHAMPION)
    if before == version:
        print(f"promote: v{version} is already @{registry.CHAMPION}; nothing changed")
        return 0
    registry.move_champion(version, before, how="manual", reason=reason)
    print(f"promote: @{registry.CHAMPION} v{before or 'none'} -> v{version} by {registry.who()} ({reason})"
          + (f"; @{registry.PREVIOUS} is v{before}" if before else ""))
    return 0


def _reference(version: str, reason: str) -> int:
    before = registry.move_reference(version, reason)
    if before == version:
        print(f"promote: v{version} is already @{registry.REFERENCE}; nothing changed")
        return 0
    print(f"promote: @{registry.REFERENCE} v{before or 'none'} -> v{version} by {registry.who()} ({reason})")
    return 0
