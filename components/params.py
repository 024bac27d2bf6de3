"""Reading ``params.yaml``: the single place where pipeline configuration lives.

Steps take their defaults from a section of ``params.yaml``; command-line flags override them.
Code defaults equal the published method, so a missing file or key falls back to the method.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: Path | None = None) -> dict[str, Any]:
    """Return the parsed params file, ``{}`` when the default file does not exist."""
    target = path or DEFAULT_PARAMS
    if not target.exists():
        if path is not None:
            raise UserError(f"params file {target} does not exist: pass an existing file with --params")
        return {}
    try:
        loaded = yaml.safe_load(target.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"params file {target} is not valid YAML ({exc}); fix the syntax and retry") from exc
    if not isinstance(loaded, dict):
        raise UserError(f"params file {target} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name, {}) or {}
    if not isinstance(value, dict):
        raise UserError(f"params section '{name}' must be a mapping, got {type(value).__name__}")
    return value


def resolve(cli_value: Any, params_section: dict[str, Any], key: str, default: Any) -> Any:
    """Flag if given, else ``params.yaml`` value, else the method's default."""
    if cli_value is not None:
        return cli_value
    return params_section.get(key, default)


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of the parameters, used to tag MLflow runs."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
