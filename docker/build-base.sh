#!/usr/bin/env bash
# Build LOCAL_BASE, a stand-in for the Dockerfile's default base image where that cannot be pulled:
# debootstrap a minimal Debian (python3, python3-venv, ca-certificates), then docker/base.Dockerfile
# on it with buildah (vfs storage, chroot isolation) adds a venv with torch + torchvision from the
# package index this machine's pip is configured for (docker/pip-serve.py; its CA bundle and pip
# settings are build secrets, absent from the image).
#   docker/build-base.sh            # or: make image (calls this when the default base can't be pulled)
# Settings (environment): DEBIAN_SUITE, DEBIAN_MIRROR, LOCAL_BASE, TORCH_PINS, DR_IMAGE_WORK.
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"
need debootstrap debootstrap
need buildah buildah

SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ctx="$WORK/base"
rootfs="$WORK/rootfs"
rm -rf "$ctx" "$rootfs"
mkdir -p "$ctx"

log "debootstrap $SUITE from $MIRROR"
"${NICE[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
# What debootstrap copied from this machine, and caches an image doesn't keep.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache
: >"$rootfs/etc/resolv.conf"
echo localhost >"$rootfs/etc/hostname"
"${NICE[@]}" tar -C "$rootfs" --numeric-owner -cf "$ctx/rootfs.tar" .
rm -rf "$rootfs"

start_pip_serve
log "buildah bud $LOCAL_BASE ($TORCH_PINS)"
"${NICE[@]}" "${BUILDAH[@]}" bud --isolation chroot "${SECRETS[@]}" \
    --build-arg "TORCH_PINS=$TORCH_PINS" \
    -f "$REPO/docker/base.Dockerfile" -t "$LOCAL_BASE" "$ctx"
rm -rf "$ctx"
"${BUILDAH[@]}" images "$LOCAL_BASE"
