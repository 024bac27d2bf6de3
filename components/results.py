"""The small result a step hands to the next one (a run id, a registered version, a decision).

A step calls :func:`publish`; it prints the result and, when the orchestrator asks for it with
HEMO_RESULT_FILE, writes it there as JSON. The Airflow runners read it back through XCom
(KubernetesPodOperator: /airflow/xcom/return.json; DockerOperator: the file retrieved from the
container; local: the file beside the process), so no task ever reads a value from a disk that
only the container or pod could see.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from components.files import write_json_atomic

RESULT_ENV = "HEMO_RESULT_FILE"


def publish(step: str, result: dict[str, Any]) -> dict[str, Any]:
    payload = {"step": step, **result}
    target = os.environ.get(RESULT_ENV)
    if target:
        write_json_atomic(Path(target), payload)
    print(f"result: {json.dumps(payload, sort_keys=True, default=str)}")
    return payload
