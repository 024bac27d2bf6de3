#!/usr/bin/env bash
# A Docker engine for `make image` and the container tests (tests/e2e/test_containers*.py,
# tests/e2e/test_stack_*.py), on a machine where none runs yet.
#
#   scripts/docker_engine.sh          start one if needed; exit 0 with one line saying why not
#                                     when this machine cannot (not root, no apt, no kernel support)
#   scripts/docker_engine.sh --require  the same, but exit 1 when no engine answers at the end
#
# What it does, only when `docker info` does not answer already:
#   * installs Debian's docker.io (dockerd 20.10, containerd, runc), docker-compose and debootstrap
#     with apt (root only);
#   * starts dockerd in the background (log: $HEMO_DOCKERD_LOG), overlay2 where the kernel has
#     it, else vfs;
#   * on a host without NVIDIA's container toolkit, puts a no-op `nvidia-container-runtime-hook`
#     on dockerd's PATH only (docker/cpu-host/): dockerd then accepts the DAG's GPU request
#     (DeviceRequest count=-1, capabilities [[gpu]]) as it does on a GPU host, and the container
#     runs on the CPU. The request stays in the container spec (`docker inspect` shows it); no GPU
#     is used. On a GPU host the real toolkit is used and this stand-in is never installed.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
LOG="${HEMO_DOCKERD_LOG:-/var/log/hemo-dockerd.log}"
HOOK_DIR="${HEMO_GPU_HOOK_DIR:-/usr/local/lib/hemo-cpu-host}"
REQUIRE=0
[ "${1:-}" = "--require" ] && REQUIRE=1

say() { echo "docker-engine: $*"; }
give_up() {
    say "$*"
    if [ "$REQUIRE" = 1 ]; then exit 1; fi
    exit 0
}

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    give_up "no Docker engine answers and this is not root: the container tests will be skipped"
fi

if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || give_up "no Docker engine and no apt-get to install docker.io: the container tests will be skipped"
    say "installing docker.io, docker-compose and debootstrap (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null \
        || give_up "apt-get could not install docker.io: the container tests will be skipped"
fi

# The no-op GPU hook, for dockerd only, and only where no real toolkit is installed.
path="$PATH"
if ! command -v nvidia-container-runtime-hook >/dev/null; then
    install -d -m 0755 "$HOOK_DIR"
    install -m 0755 "$HERE/docker/cpu-host/nvidia-container-runtime-hook" "$HOOK_DIR/nvidia-container-runtime-hook"
    path="$HOOK_DIR:$PATH"
fi

driver=vfs
grep -qw overlay /proc/filesystems 2>/dev/null && driver=overlay2
say "starting dockerd (storage driver $driver, log $LOG)"
mkdir -p "$(dirname "$LOG")"
PATH="$path" setsid nohup dockerd --storage-driver "$driver" >>"$LOG" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        say "dockerd is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    sleep 1
done
if [ "$driver" = overlay2 ] && grep -q "overlay" "$LOG"; then
    say "overlay2 failed; retrying with vfs"
    pkill -F /var/run/docker.pid 2>/dev/null || true
    sleep 2
    PATH="$path" setsid nohup dockerd --storage-driver vfs >>"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && exit 0
        sleep 1
    done
fi
give_up "dockerd did not start (see $LOG): the container tests will be skipped"
