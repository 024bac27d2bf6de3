"""The MLflow accounts of the stack, made by the one account allowed to make them.

Run once per ``docker compose up`` by the ``mlflow-init`` service (docker/compose.yaml), after the
basic-auth server is healthy; safe to run again (it converges: users created or their password
reset to docker/.env's, grants set again). It signs in as the admin, the only client that ever
uses that account, and leaves:

* the pipeline's **writer** (MLFLOW_WRITER_USERNAME): EDIT on the pipeline's experiment and
  registered model (create runs, log, register versions, move @champion/@challenger/@previous,
  tag versions). Not an admin, no MANAGE: it cannot create users or change permissions.
* a **reader** (MLFLOW_READER_USERNAME): READ on both (read runs, download models), so it gets a
  403 on any write to them, moving an alias included. The server's default_permission is READ
  as well (docker/mlflow-basic-auth.ini).
* the **promotion lease** (registered model ``<MODEL>.champion-lease``,
  hemo_pipeline/services/champion_lease.py): every account may create a registered model and
  becomes MANAGE on what it creates, so the writer needs nothing to take and release the lease.
  Two roles (RBAC roles made by the admin, which MLflow never sweeps, unlike the per-user grant on
  a name that every delete of that name removes) cover the rest: ``hemo-lease-breaker`` gives the
  writer MANAGE on the lease name, so it can break a stale lease whoever left it;
  ``hemo-lease-denied`` gives the reader DENY on it, so a reader cannot take the lease and block
  promotions.

Both resources are created here if absent, so the grants never depend on who created them first.
Passwords come from the environment (never argv) and are never printed.

Only MLflow is imported (the mlflow image has no hemo package); tests/security/test_stack.py runs
this same file against a real basic-auth server.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

EXPERIMENT = os.environ.get("HEMO_MLFLOW_EXPERIMENT", "hemorrhage-classifier")
"""hemo_pipeline.services.tracking.DEFAULT_EXPERIMENT (a test keeps the two equal)."""
MODEL = os.environ.get("HEMO_MLFLOW_MODEL", "hemorrhage-classifier")
"""hemo_pipeline.services.registry.MODEL_NAME (a test keeps the two equal)."""
WRITER_PERMISSION = "EDIT"
READER_PERMISSION = "READ"
LEASE = f"{MODEL}.champion-lease"
"""hemo_pipeline.services.champion_lease.LEASE_MODEL (a test keeps the two equal)."""
WORKSPACE = "default"
"""MLflow's workspace when workspaces are off (mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME)."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise SystemExit(f"mlflow-init: {name} is not set; set it in docker/.env (make secrets)")
    return value


def ensure_user(auth, username: str, password: str) -> str:
    """Create ``username``, or reset its password to ``password`` when it exists (so a password
    rotated in docker/.env takes effect on the next start). Returns 'created' or 'updated'."""
    from mlflow.exceptions import RestException

    try:
        auth.get_user(username)
    except RestException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(username, password)
        return "created"
    auth.update_user_password(username, password)
    return "updated"


def ensure_resources(tracking) -> str:
    """The pipeline's experiment and registered model; returns the experiment id."""
    from mlflow.exceptions import RestException

    experiment = tracking.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else tracking.create_experiment(EXPERIMENT)
    try:
        tracking.create_registered_model(MODEL)
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return experiment_id


def provision(uri: str, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Sign in as the admin (MLFLOW_ADMIN_USERNAME/PASSWORD) and make the writer and the reader
    with their grants. Returns what was done per user (no secret in it)."""
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    admin = (_required(env, "MLFLOW_ADMIN_USERNAME"), _required(env, "MLFLOW_ADMIN_PASSWORD"))
    writer = (_required(env, "MLFLOW_WRITER_USERNAME"), _required(env, "MLFLOW_WRITER_PASSWORD"))
    reader = (_required(env, "MLFLOW_READER_USERNAME"), _required(env, "MLFLOW_READER_PASSWORD"))
    if len({admin[0], writer[0], reader[0]}) != 3:
        raise SystemExit("mlflow-init: the admin, writer and reader must be three different users")
    # MLflow's REST clients take the login from these variables (only this process sees them).
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin
    auth, tracking = AuthServiceClient(uri), MlflowClient(uri)
    done = {writer[0]: ensure_user(auth, *writer), reader[0]: ensure_user(auth, *reader)}
    experiment_id = ensure_resources(tracking)
    for (username, _), permission in ((writer, WRITER_PERMISSION), (reader, READER_PERMISSION)):
        grant(auth, username, "experiment", experiment_id, permission)
        grant(auth, username, "registered_model", MODEL, permission)
    ensure_role(auth, "hemo-lease-breaker", "writer: MANAGE on the promotion lease (break a stale one)",
                ("registered_model", LEASE, "MANAGE"), writer[0])
    ensure_role(auth, "hemo-lease-denied", "reader: may not take the promotion lease",
                ("registered_model", LEASE, "DENY"), reader[0])
    return done


def ensure_role(auth, name: str, description: str, permission: tuple[str, str, str], username: str) -> None:
    """An admin-made role holding exactly ``permission`` (type, pattern, level), assigned to
    ``username``; converges on a second run."""
    role = next((r for r in auth.list_roles(WORKSPACE) if r.name == name), None)
    if role is None:
        role = auth.create_role(WORKSPACE, name, description)
    have = auth.list_role_permissions(role.id)
    for existing in have:
        if (existing.resource_type, existing.resource_pattern, existing.permission) != permission:
            auth.remove_role_permission(existing.id)
    if not any((p.resource_type, p.resource_pattern, p.permission) == permission for p in have):
        auth.add_role_permission(role.id, *permission)
    if all(r.id != role.id for r in auth.list_user_roles(username)):
        auth.assign_role(username, role.id)


def grant(auth, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Set ``username``'s permission on one resource to exactly ``permission``: a grant that
    exists (an earlier run's, or MANAGE that a creator gets) is replaced, never left wider."""
    from mlflow.exceptions import RestException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, permission)


def main() -> int:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    deadline = time.monotonic() + float(os.environ.get("MLFLOW_INIT_TIMEOUT_S", "120"))
    while True:
        try:
            done = provision(uri)
            break
        except SystemExit:
            raise
        except Exception as exc:  # the server still starting: retry until the deadline
            if time.monotonic() > deadline:
                print(f"mlflow-init: {uri} refused the setup: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
                return 3
            time.sleep(2)
    print("mlflow-init: " + ", ".join(f"{user} {what}" for user, what in done.items())
          + f"; writer {WRITER_PERMISSION}, reader {READER_PERMISSION} on experiment {EXPERIMENT!r} and model {MODEL!r}; "
          f"promotion lease {LEASE!r}: writer MANAGE, reader DENY")
    return 0


if __name__ == "__main__":
    sys.exit(main())
