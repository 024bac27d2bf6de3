"""A network on disk, in two forms, both rebuilt from a :class:`~hemo_model.model.spec.ModelSpec`.

* a training checkpoint (``torch.save``: weights, spec, optimizer and RNG state for resuming),
  read only with ``weights_only=True``, so a pickled payload is refused, not run;
* a model folder (``spec.json`` + ``model.safetensors``), the registered form: plain JSON and raw
  tensors, with no pickle anywhere, whatever bytes the folder holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hemo_model.model.networks import build_model
from hemo_model.model.spec import ModelSpec, SpecError


def save_checkpoint(path: Path, model: nn.Module, spec: ModelSpec, **extra: Any) -> None:
    """Atomic save (temp file + rename) of weights, spec and any extra training state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model_state": model.state_dict(), "spec": spec.to_dict(), **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


class CheckpointError(ValueError):
    """A file that is not a usable hemo checkpoint; the message says which way it is not."""


def _read_payload(path: Path) -> Any:
    """``torch.load`` with ``weights_only`` (no code runs), failures sorted into what they mean."""
    import pickle
    import zipfile

    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
    if size == 0:
        raise CheckpointError("the file is empty (an interrupted copy or write?)")
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"the file is truncated ({size} bytes, the archive has no end): an interrupted "
                              "write or copy")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # weights_only met a class or function reference: pickled code, refused
            raise CheckpointError("not a hemo checkpoint: it references Python code that only full unpickling "
                                  "would import and run (refused)") from exc
        raise CheckpointError("not a PyTorch checkpoint (the content is not a torch.save archive)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable PyTorch checkpoint ({type(exc).__name__})") from exc


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint` (CPU tensors).
    Raises :class:`CheckpointError` with the reason when the file is not one."""
    payload = _read_payload(path)
    if not isinstance(payload, dict) or "model_state" not in payload:
        raise CheckpointError("not a hemo checkpoint (a torch file without model_state/spec)")
    if "spec" not in payload:
        raise CheckpointError("written by an earlier release (it has no model spec); re-create it with `hemo train`"
                              " / `hemo refine`")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except SpecError as exc:
        raise CheckpointError(f"its model spec is not one this release knows: {exc}") from exc
    model = build_model(spec)
    try:
        model.load_state_dict(payload["model_state"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"its weights do not fit the model it describes ({type(exc).__name__})") from exc
    return model, spec, payload


SPEC_FILE = "spec.json"


WEIGHTS_FILE = "model.safetensors"


MAX_SPEC_BYTES = 64 * 1024


class ModelFileError(ValueError):
    """A model folder that cannot be used; the message says which file and why."""


def save_model_folder(folder: Path, model: nn.Module, spec: ModelSpec) -> None:
    """Write ``spec.json`` and ``model.safetensors`` (CPU tensors, names as in ``state_dict``)."""
    import json

    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    # bytes written as any file (the umask's mode): safetensors' save_file makes its files 0600,
    # which a reader of another uid (the Airflow worker, a serving host) then cannot open
    (folder / WEIGHTS_FILE).write_bytes(save(state, metadata={"format": spec.to_dict()["format"]}))
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def read_model_folder(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the network of a model folder: the spec (strict JSON) decides the architecture,
    this library builds it, and the safetensors file fills it; every tensor name, shape and dtype
    must match exactly. Nothing is unpickled; no other file of the folder is opened."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if path.is_symlink() or not path.is_file():
            raise ModelFileError(f"{path.name} is missing (or not a plain file)")
    if spec_path.stat().st_size > MAX_SPEC_BYTES:
        raise ModelFileError(f"{SPEC_FILE} is {spec_path.stat().st_size} bytes, more than a spec can be "
                             f"({MAX_SPEC_BYTES})")
    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        spec = ModelSpec.from_dict(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, SpecError) as exc:
        raise ModelFileError(f"{SPEC_FILE}: {exc}") from exc
    model = build_model(spec)
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{WEIGHTS_FILE} is not a readable safetensors file ({exc})") from exc
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(state))
    wrong += [k for k in expected if k in state and (state[k].shape != expected[k].shape
                                                     or state[k].dtype != expected[k].dtype)]
    if wrong:
        raise ModelFileError(f"{WEIGHTS_FILE} does not fit the {spec.architecture}/{spec.head}/{spec.context} network "
                             f"its spec describes ({len(wrong)} tensor(s) missing, extra or of another shape or "
                             f"dtype, e.g. {wrong[0]!r})")
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def _refuse_constant(name: str) -> Any:
    raise SpecError(f"{name} is not a number a spec may hold")
