#!/usr/bin/env bash
# Print the path of a Docker Compose v2 binary (`docker compose`), fetching Debian's own where none
# is installed. docker/compose.yaml is a Compose-spec file (top-level `name:`, long-form depends_on
# conditions), which Debian bookworm's docker-compose 1.29 refuses; Debian's next release (trixie)
# packages Compose v2 as `docker-compose`, one static Go binary. This downloads that package with
# apt-get from Debian's mirror into a cache folder (its own package lists, nothing installed into
# the system) and unpacks the binary from it.
#
#   scripts/compose_v2.sh   -> prints e.g. ~/.cache/hemo-pipeline/compose/docker-compose; exit 1 if none can be had
set -euo pipefail

CACHE="${HEMO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hemo-pipeline}/compose"
MIRROR="${HEMO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${HEMO_COMPOSE_SUITE:-trixie}"

is_v2() { "$1" version --short 2>/dev/null | grep -qE '^v?2\.'; }

if docker compose version >/dev/null 2>&1; then
    plugin="$(docker info --format '{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Path}}{{end}}{{end}}' 2>/dev/null || true)"
    if [ -n "$plugin" ] && is_v2 "$plugin"; then echo "$plugin"; exit 0; fi
fi
if command -v docker-compose >/dev/null && is_v2 "$(command -v docker-compose)"; then
    command -v docker-compose
    exit 0
fi
if [ -x "$CACHE/docker-compose" ] && is_v2 "$CACHE/docker-compose"; then
    echo "$CACHE/docker-compose"
    exit 0
fi
command -v apt-get >/dev/null || { echo "compose-v2: no Compose v2 and no apt-get to fetch Debian's" >&2; exit 1; }
mkdir -p "$CACHE/lists/partial" "$CACHE/archives/partial" "$CACHE/deb"
echo "deb $MIRROR $SUITE main" > "$CACHE/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$CACHE/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
          -o "Dir::State::Lists=$CACHE/lists" -o "Dir::Cache=$CACHE" -o "Debug::NoLocking=1"
          -o "APT::Sandbox::User=root")
apt-get -qq "${apt_opts[@]}" update >&2
(cd "$CACHE/deb" && apt-get -qq "${apt_opts[@]}" download docker-compose >&2)
rm -rf "$CACHE/root"
dpkg-deb -x "$(ls -t "$CACHE"/deb/docker-compose_*.deb | head -1)" "$CACHE/root"
binary="$(find "$CACHE/root" -type f -name docker-compose -perm -u+x | head -1)"
[ -n "$binary" ] || { echo "compose-v2: no docker-compose binary in Debian's package" >&2; exit 1; }
install -m 0755 "$binary" "$CACHE/docker-compose"
rm -rf "$CACHE/root" "$CACHE/lists"
is_v2 "$CACHE/docker-compose" || { echo "compose-v2: the fetched binary is not Compose v2" >&2; exit 1; }
echo "$CACHE/docker-compose"
