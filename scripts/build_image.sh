#!/usr/bin/env bash
# `make image`: build docker/Dockerfile here, with no image registry and no network in the build.
#
#   scripts/build_image.sh            -> hemo:0.1.0 on the Debian base made by scripts/debian_base.sh
#   BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 scripts/build_image.sh   (a host with a registry)
#
# Steps, each reused when its inputs did not change:
#   1. a Docker engine (scripts/docker_engine.sh --require);
#   2. the base image: for hemo-base/debian:* a debootstrap of Debian (scripts/debian_base.sh);
#      any other base is whatever `docker build` finds or pulls;
#   3. a local index of exactly requirements.lock's files (scripts/wheelhouse.py, PYTHON runs it),
#      served on 127.0.0.1 for the duration of the build;
#   4. `docker build --network host` of the Dockerfile users build, only BASE_IMAGE and
#      PIP_INDEX_URL differ; Docker's layer cache keeps the dependency layer until the lock changes.
# Prints the build time and the image size.
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE="${HEMO_IMAGE:-hemo:0.1.0}"
BASE_IMAGE="${BASE_IMAGE:-hemo-base/debian:bookworm}"
PYTHON="${PYTHON:-python3}"
WHEELHOUSE="${HEMO_WHEELHOUSE:-${HEMO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hemo-pipeline}/wheelhouse}"

scripts/docker_engine.sh --require
case "$BASE_IMAGE" in
    hemo-base/debian:*) scripts/debian_base.sh "$BASE_IMAGE" ;;
esac
"$PYTHON" scripts/wheelhouse.py --out "$WHEELHOUSE"

# A fixed port: the index URL is a build argument, and Docker keys its layer cache on the values a
# RUN sees, so a URL that changed between builds would rebuild the dependency layer (~10 min).
port="${HEMO_WHEELHOUSE_PORT:-3141}"
# (SO_REUSEADDR as http.server sets it: the last build's socket may linger in TIME_WAIT)
if ! "$PYTHON" -c "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $port))" 2>/dev/null; then
    port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "image: port ${HEMO_WHEELHOUSE_PORT:-3141} is taken; serving the wheels on $port (the dependency layer will be rebuilt)"
fi
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/simple/', timeout=1)" 2>/dev/null && break
    sleep 0.2
done

commit="${HEMO_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
# The legacy builder unless buildx is installed: Debian bookworm's docker.io has no buildx plugin,
# and a CLI without it refuses BuildKit builds.
if docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
previous="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
started=$(date +%s)
echo "image: docker build -f docker/Dockerfile --build-arg BASE_IMAGE=$BASE_IMAGE -t $IMAGE . (pinned wheels from 127.0.0.1:$port)"
set +e
docker build --network host -f docker/Dockerfile \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_INDEX_URL="http://127.0.0.1:$port/simple/" \
    --build-arg HEMO_GIT_COMMIT="$commit" \
    --label org.opencontainers.image.base.name="$BASE_IMAGE" \
    -t "$IMAGE" . 2>&1 | { grep -v "^DEPRECATED\|legacy builder is deprecated\|BuildKit is currently disabled\|Install the buildx component\|docs.docker.com/go/buildx\\|^ *environment-variable\.$" || true; }
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || { echo "image: docker build failed (exit $status)" >&2; exit "$status"; }
# The image this build replaced goes (a 7 GB dependency layer each time the lock changes); Docker
# keeps any layer another image or a container still uses.
current="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then docker rmi "$previous" >/dev/null 2>&1 || true; fi
size="$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
echo "image: $IMAGE built in $(( $(date +%s) - started )) s, $size (base $BASE_IMAGE, commit ${commit:0:12})"
