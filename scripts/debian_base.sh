#!/usr/bin/env bash
# A Debian bookworm base image made from Debian's own packages, for machines that reach Debian's
# mirror and PyPI but no image registry (this project's CI): debootstrap (minbase) into a folder,
# packed once into a cached tarball, then `docker import`ed.
#
#   scripts/debian_base.sh [TAG]      default TAG: hemo-base/debian:bookworm
#
# The tarball is kept in $HEMO_CACHE (default ~/.cache/hemo-pipeline), so a new clone or a
# restarted engine imports it again in seconds instead of bootstrapping (about a minute).
# Nothing is done when the image exists. docker/Dockerfile takes it as BASE_IMAGE; in production
# the default base is NVIDIA's CUDA image from a registry.
set -euo pipefail

TAG="${1:-hemo-base/debian:bookworm}"
SUITE="${HEMO_DEBIAN_SUITE:-bookworm}"
MIRROR="${HEMO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${HEMO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hemo-pipeline}"
TARBALL="$CACHE/debian-$SUITE-minbase.tar"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "debian-base: $TAG present"
    exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { echo "debian-base: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    started=$(date +%s)
    echo "debian-base: debootstrap --variant=minbase $SUITE from $MIRROR"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # the image's apt reads the same suites the host's Debian does (security updates included)
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    echo "debian-base: rootfs cached in $TARBALL ($(( $(date +%s) - started )) s)"
fi
docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$TAG" >/dev/null
echo "debian-base: imported $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
