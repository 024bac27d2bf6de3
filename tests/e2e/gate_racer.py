"""One racing "gate" for tests/e2e/test_concurrent_gates.py: ``python -m tests.e2e.gate_racer``.

Imports once (torch and MLflow take seconds on a busy CI core) and prints ``ready``; then, for
each line ``<version>`` on stdin (one per round; the test writes it to every racer at once), does
what `hemo gate` does when a challenger passes: read ``@champion``, think for a random 0-0.3 s,
and ``move_champion(version, expected=what it read, how="gate")``. Prints one line per round:
``promoted <version> <expected>`` or ``moved <version> <expected>`` (AliasMoved). Ends at EOF.
"""

from __future__ import annotations

import random
import sys
import time

from hemo_pipeline.services import registry


def race(version: str) -> str:
    expected = registry.alias_version(registry.CHAMPION)
    time.sleep(random.uniform(0.0, 0.3))
    try:
        registry.move_champion(version, expected, how="gate", reason=f"race test: v{version} beat {expected}")
    except registry.AliasMoved:
        return f"moved {version} {expected}"
    return f"promoted {version} {expected}"


def main() -> int:
    print("ready", flush=True)
    for line in sys.stdin:
        print(race(line.strip()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
