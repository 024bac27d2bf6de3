"""Pull the versioned data (`dvc pull data.dvc`) before a pipeline run validates it.

Only ``data.dvc`` is pulled: exactly the data version the project's git commit names, not the
pipeline's own outputs. With no DVC remote configured the step has nothing to pull and says so
(result ``skipped``; the data already in the project is used). A remote that lacks this version
of the data is a user error (exit 2: push it where it was added, or point the default remote at
the right storage); any other failure of `dvc pull` (network, credentials of a server that does
not answer) is transient (exit 3, retried).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from hemo_pipeline.services.errors import TransientError, UserError
from hemo_pipeline.services.results import publish

DVC_FILE = "data.dvc"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=Path, default=Path(os.environ.get("HEMO_PROJECT_DIR") or "."),
                        help="the project folder that holds data.dvc (default: HEMO_PROJECT_DIR, else .)")


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    dvc = str(Path(sys.executable).with_name("dvc"))
    return subprocess.run([dvc, *args], cwd=project, capture_output=True, text=True)


def run(args: argparse.Namespace) -> int:
    project = args.project
    if not (project / DVC_FILE).is_file():
        raise UserError(f"{project / DVC_FILE} not found: run in the project folder or pass --project")
    remotes = _dvc(project, "remote", "list")
    if remotes.returncode != 0 or not remotes.stdout.strip():
        reason = "no DVC remote configured: using the data already in the project"
        print(f"sync-data: {reason}")
        publish("sync-data", {"skipped": True, "reason": reason})
        return 0
    remote = _dvc(project, "remote", "default").stdout.strip() or remotes.stdout.split()[0]
    pulled = _dvc(project, "pull", DVC_FILE)
    print(pulled.stdout[-4000:], pulled.stderr[-4000:], sep="\n")
    if pulled.returncode != 0:
        error = next((line for line in pulled.stderr.splitlines() if line.startswith("ERROR")), pulled.stderr[-300:])
        if "missing" in pulled.stderr or "Checkout failed" in pulled.stderr:
            raise UserError(f"dvc pull {DVC_FILE} from remote '{remote}' failed: {error.strip()} -> the remote does not "
                            f"hold this version of the data: run `dvc push {DVC_FILE}` where the data was added, or "
                            "point the default remote at the right storage")
        raise TransientError(f"dvc pull {DVC_FILE} from remote '{remote}' failed: {error.strip()} -> check the "
                             "remote's address and credentials")
    print(f"sync-data: pulled {DVC_FILE} from remote '{remote}'")
    publish("sync-data", {"skipped": False, "remote": remote})
    return 0
