#!/usr/bin/env bash
# make image: build the project's Dockerfile with buildah (vfs storage, chroot isolation: no Docker
# daemon, no overlay filesystem, no user namespaces needed), tagged with the package version.
# The base is the Dockerfile's default (pytorch/pytorch) when it can be pulled, else LOCAL_BASE,
# which docker/build-base.sh builds once (Debian 12 + Python 3.11 + torch from the package index).
# pip inside the build uses this machine's index settings and CA bundle as build secrets
# (docker/pip-serve.py): the image keeps neither. The image's OCI labels get the package version and
# the commit (VERSION, REVISION build args). Writes docker/results/image.txt, with the base's digest.
# Settings (environment): IMAGE, BASE_IMAGE (skip the pull), REBUILD_BASE=1, STORAGE_DRIVER.
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"
need buildah buildah
mkdir -p "$WORK" "$RESULTS"
t0=$(date +%s)
# The commit and whether the build's inputs differ from it (uncommitted or untracked files), taken
# before anything is written: docker/results/ is this script's own output, not an input.
revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
short=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
changes=$(git -C "$REPO" --no-optional-locks status --porcelain -- Dockerfile docker dr teachers storage cli setup.cfg \
    pyproject.toml README.md ':(exclude)docker/results' 2>/dev/null || true)

base=${BASE_IMAGE:-}
why="BASE_IMAGE set"
if [ -z "$base" ]; then
    log "pull $DEFAULT_BASE"
    if timeout 1800 "${BUILDAH[@]}" pull "$DEFAULT_BASE" >"$WORK/pull.log" 2>&1; then
        base=$DEFAULT_BASE
        why="pulled"
    else
        why="$DEFAULT_BASE could not be pulled: $(tail -1 "$WORK/pull.log")"
        log "$why"
        if [ "${REBUILD_BASE:-0}" = 1 ] || ! image_exists "$LOCAL_BASE"; then
            "$REPO/docker/build-base.sh"
        fi
        base=$LOCAL_BASE
        why="local base (docker/build-base.sh): $why"
    fi
fi

old_id=$("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$IMAGE" 2>/dev/null || true)
start_pip_serve
log "buildah bud $IMAGE on $base"
"${NICE[@]}" "${BUILDAH[@]}" bud --isolation chroot "${SECRETS[@]}" \
    --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" \
    -f "$REPO/Dockerfile" -t "$IMAGE" "$REPO"
id=$("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$id" ]; then  # the previous build of this tag, now untagged
    "${BUILDAH[@]}" rmi "$old_id" >/dev/null 2>&1 || true
fi

fmt() { "${BUILDAH[@]}" inspect --type image --format "$1" "$2"; }
{
    echo "# make image ($(basename "$0")): $(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - t0 )) s on $(nproc) cores"
    echo "commit:      $short${changes:+ (+ uncommitted changes)}"
    echo "image:       $IMAGE"
    echo "id:          $id"
    echo "size:        $("${BUILDAH[@]}" images --noheading --format '{{.Size}}' "$IMAGE")"
    echo "base:        $base ($why)"
    echo "base id:     $("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$base")"
    # the manifest digest the base was stored with: pin a pulled base as BASE_IMAGE=NAME@DIGEST (docs/docker.md)
    echo "base digest: $("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.Digest}}' "$base")"
    echo "base size:   $("${BUILDAH[@]}" images --noheading --format '{{.Size}}' "$base")"
    echo "layers:      $(fmt '{{len .OCIv1.RootFS.DiffIDs}}' "$IMAGE")"
    echo "entrypoint:  $(fmt '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE")"
    echo "user:        $(fmt '{{.OCIv1.Config.User}}' "$IMAGE")"
    echo "env:         $(fmt '{{.OCIv1.Config.Env}}' "$IMAGE")"
    echo "labels:      $(fmt '{{.OCIv1.Config.Labels}}' "$IMAGE")"
    echo "builder:     $(buildah --version), storage $STORAGE_DRIVER, isolation chroot"
} | tee "$RESULTS/image.txt"
