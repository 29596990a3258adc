# shellcheck shell=bash disable=SC2034  # (settings used by the scripts that source this file)
# Shared settings of docker/*.sh (sourced, not run). Every setting can be overridden from the
# environment, e.g. `IMAGE=dr:test STORAGE_DRIVER=overlay make image`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The project's venv if there is one (`make venv`): its pip configuration is this machine's.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac
VERSION=$(cd "$REPO" && "$PYTHON" -c 'import dr; print(dr.__version__)')
IMAGE=${IMAGE:-localhost/dr:$VERSION}
DEFAULT_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO/Dockerfile")
case ${DEFAULT_BASE%%/*} in  # a short name means Docker Hub, as for docker; buildah wants it spelled out
    *.* | *:* | localhost) ;;
    *) DEFAULT_BASE=docker.io/$DEFAULT_BASE ;;
esac
# The local stand-in for DEFAULT_BASE (docker/build-base.sh): Debian 12 + its Python 3.11 + torch.
TORCH_PINS=${TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}
LOCAL_BASE=${LOCAL_BASE:-localhost/dr-base:bookworm-torch2.14.1}
# vfs needs no kernel overlay support; chroot isolation needs no user namespaces or cgroups.
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
BUILDAH=(buildah --storage-driver "$STORAGE_DRIVER")
# crun refuses this machine's hybrid cgroup hierarchy; runc with cgroupfs runs.
PODMAN=(podman --storage-driver "$STORAGE_DRIVER" --runtime "${PODMAN_RUNTIME:-runc}" --cgroup-manager "${PODMAN_CGROUP_MANAGER:-cgroupfs}")
# Limits the container may not raise above this shell's (podman's defaults need CAP_SYS_RESOURCE).
PODMAN_ULIMITS=(--ulimit "nofile=${DR_NOFILE:-16384}:${DR_NOFILE:-16384}" --ulimit "nproc=${DR_NPROC:-16384}:${DR_NPROC:-16384}")
# Heavy steps yield to everything else on the machine.
NICE=(nice -n 19 ionice -c3)
WORK=${DR_IMAGE_WORK:-/var/tmp/dr-image}
RESULTS=${RESULTS:-$REPO/docker/results}

need() {  # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null || { echo "$(basename "$0"): needs $1 (Debian: apt-get install $2)" >&2; exit 1; }
}

log() { echo "== $*" >&2; }

# start_pip_serve: serve this machine's pip configuration to the build (docker/pip-serve.py) and set
# SECRETS to the buildah arguments that mount it, with the host's CA bundle, for each RUN step that
# names them (RUN --mount=type=secret,id=pip.conf / id=ca.crt). Nothing of either reaches a layer.
start_pip_serve() {
    local dir="$WORK/pip-serve"
    rm -rf "$dir"
    "$PYTHON" "$REPO/docker/pip-serve.py" --out "$dir" --pip "${HOST_PIP:-$PYTHON -m pip}" &
    PIP_SERVE_PID=$!
    trap 'kill "$PIP_SERVE_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do
        [ -f "$dir/host-cert" ] && break
        kill -0 "$PIP_SERVE_PID" 2>/dev/null || { echo "pip-serve.py failed" >&2; exit 1; }
        sleep 0.1
    done
    [ -f "$dir/host-cert" ] || { echo "pip-serve.py did not start" >&2; exit 1; }
    SECRETS=(--secret "id=pip.conf,src=$dir/pip.conf")
    local cert
    cert=$(cat "$dir/host-cert")
    if [ -n "$cert" ]; then SECRETS+=(--secret "id=ca.crt,src=$cert"); fi
    log "build-time pip.conf (a build secret):"
    sed 's/^/   /' "$dir/pip.conf" >&2
}

image_exists() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# smoke_setup NAME: podman present, the image built, and a fresh $t with an output folder the
# image's user (uid 1000) can write
smoke_setup() {
    need podman podman
    image_exists "$IMAGE" || { echo "no image $IMAGE: run make image first" >&2; exit 1; }
    t="$WORK/$1"
    rm -rf "$t"
    mkdir -p "$t/out" "$RESULTS"
    chmod 0777 "$t/out"
}
