"""Roll @champion back to @previous (the champion it replaced), with a reason.

Swaps the two aliases, so the demoted version becomes `@previous` and a second rollback undoes the
first; tags both versions with who (HEMO_USER, else the login name), when and why. The move goes
through registry.move_champion, so it holds the promotion lease and appends an alias-history entry.
"""

from __future__ import annotations

import argparse

from hemo_pipeline.services import registry
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.step_args import reason_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", required=True, help="why (kept on both versions)")


def run(args: argparse.Namespace) -> int:
    reason = reason_of(args)
    champion = registry.alias_version(registry.CHAMPION)
    previous = registry.alias_version(registry.PREVIOUS)
    if previous is None:
        raise UserError(f"no version has alias @{registry.PREVIOUS} in '{registry.MODEL_NAME}', so there is nothing "
                        "to roll back to; use `hemo promote --version N --reason ...`")
    registry.move_champion(previous, champion, how="rollback", reason=reason)
    if champion is not None:
        registry.tag_version(champion, {"rollback.by": registry.who(), "rollback.at": registry.now(),
                                        "rollback.reason": reason})
    print(f"rollback: @{registry.CHAMPION} v{champion or 'none'} -> v{previous} by {registry.who()} ({reason}); "
          f"@{registry.PREVIOUS} is now v{champion or 'none'}")
    return 0
