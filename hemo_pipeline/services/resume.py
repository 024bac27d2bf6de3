"""Whether a retried `hemo train` / `refine` continues its last checkpoint: only one made with the
same settings, data and code (its fingerprint), and never silently over one made otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import hemo_model
from hemo_model.training.checkpointer import LAST, read_last
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.settings import (
    Settings,
    digest,
)


def code_digest() -> str:
    """Digest of the code that shapes training: the ML library, the training stages and the
    settings layer that configures them."""

    library = Path(hemo_model.__file__).parent
    services = Path(__file__).parent
    files = sorted(library.rglob("*.py")) + [services / name for name in
                                             ("stages.py", "training_setup.py", "settings.py", "patient_roles.py")]
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(library.parent if path.is_relative_to(library) else services.parent.parent)
        digest.update(str(name).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def data_digest(patients: list) -> str:
    """Digest of what a fit reads: patient folders, slice file names and labels (not pixels)."""
    digest = hashlib.sha256()
    for p in sorted(patients, key=lambda q: q.dirname):
        digest.update(p.dirname.encode() + b"\0" + "\0".join(p.slice_ids).encode())
        if p.labels is not None:
            digest.update(p.labels.tobytes())
    return digest.hexdigest()[:16]


def fingerprint(settings: Settings, roles: dict[str, list], stage: str, init: Path | None = None) -> dict[str, Any]:
    """What must be equal for a checkpoint to be continued: settings that shape training (not
    epochs, workers or caching), the train and val patients and labels, the code, and for
    refinement the stage-1 checkpoint it starts from."""

    values = settings.to_dict()
    parts: dict[str, Any] = {
        "train": {k: v for k, v in values["train"].items() if k not in ("epochs", "workers", "cache_images")},
        "model": values["model"], "split": values["split"], "selection": values["selection"],
        "data": data_digest(roles["train"] + roles["val"]), "code": code_digest(),
    }
    if stage == "refine":
        parts["refine"] = {k: v for k, v in values["refine"].items() if k not in ("epochs", "head_epochs")}
        parts["init"] = hashlib.sha256(init.read_bytes()).hexdigest()[:16] if init is not None else None
    hashed = {name: digest(value) for name, value in parts.items()}
    return {"digest": digest(hashed), "parts": hashed}


def resume_from(mode: str, out: Path, current: dict[str, Any], produced_by: str) -> dict[str, Any] | None:
    """The ``out/last.pt`` payload to continue (see --resume), or None to start fresh. The file is
    read once, here; the fit restores from this payload. A checkpoint of an unfinished run made
    with other settings, data or code is never silently thrown away."""
    last = out / LAST
    if mode == "never":
        return None
    try:
        payload = read_last(out)
    except Exception as exc:  # an interrupted write is replaced atomically, so this is foreign/corrupt
        raise UserError(f"{last} cannot be read ({type(exc).__name__}); delete it or pass --resume never") from exc
    if payload is None:
        if mode == "always":
            raise UserError(f"--resume given but {last} does not exist; run without --resume")
        return None
    recorded = payload.get("fingerprint") or {}
    if recorded.get("digest") == current["digest"]:
        return payload
    changed = sorted(k for k in current["parts"] if (recorded.get("parts") or {}).get(k) != current["parts"][k])
    finished = int(payload.get("epoch", 0)) >= int(payload.get("target_epochs", 10**9))
    what = ", ".join(changed) if recorded.get("parts") else "unknown (a checkpoint of an older release)"
    if finished and mode == "auto":
        print(f"{produced_by}: {last} is a finished run with other {what}; starting fresh")
        return None
    raise UserError(f"{last} is an {'unfinished' if not finished else 'earlier'} run made with other {what} than now; "
                    f"resume it with the same settings, data and code, or pass --resume never to start over")
