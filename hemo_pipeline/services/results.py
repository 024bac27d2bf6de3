"""The small result a step hands to the next one (a run id, a registered version, a decision).

A step calls :func:`publish`; it prints the result and, when the orchestrator asks for it with
HEMO_RESULT_FILE, writes it there as JSON. The Airflow runners read it back through XCom
(KubernetesPodOperator: /airflow/xcom/return.json; DockerOperator: the file retrieved from the
container; local: the file beside the process), so no task ever reads a value from a disk that
only the container or pod could see.

Kubeflow Pipelines wants one file per output parameter instead (a component's ``dsl.OutputPath``),
and can hand those paths to a container only as arguments. So an orchestrator may also ask for
single fields: ``HEMO_RESULT_FIELD_<KEY>=<path>`` writes the field ``key`` to ``path``, strings as
they are and anything else as JSON (``true``, ``3``), which is how Kubeflow reads output
parameters back. Asking for a field the step does not publish is a wiring bug between the
pipeline and the step, so it fails loudly instead of leaving the output missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hemo_pipeline.services.files import write_json_atomic, write_text_atomic

RESULT_ENV = "HEMO_RESULT_FILE"
FIELD_ENV_PREFIX = "HEMO_RESULT_FIELD_"


def field_env(key: str) -> str:
    """The variable that asks for the result field ``key`` in a file of its own."""
    return FIELD_ENV_PREFIX + key.upper()


def publish(step: str, result: dict[str, Any]) -> dict[str, Any]:
    payload = {"step": step, **result}
    target = os.environ.get(RESULT_ENV)
    if target:
        write_json_atomic(Path(target), payload)
    wanted = {name[len(FIELD_ENV_PREFIX):].lower(): path for name, path in os.environ.items()
              if name.startswith(FIELD_ENV_PREFIX) and path}
    missing = sorted(set(wanted) - set(payload))
    if missing:
        raise RuntimeError(f"the orchestrator asked for result field(s) {missing} that hemo {step} does not "
                           f"publish (it publishes {sorted(payload)}): fix the pipeline's outputs for this step")
    for key, path in wanted.items():
        value = payload[key]
        write_text_atomic(Path(path), value if isinstance(value, str) else json.dumps(value, default=str))
    print(f"result: {json.dumps(payload, sort_keys=True, default=str)}")
    return payload
