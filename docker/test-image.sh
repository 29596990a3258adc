#!/usr/bin/env bash
# make image-test: run the image built by `make image` with podman (vfs storage) and check it:
#   1. `dr-build --help` (the entry point with the image's default command);
#   2. `dr-build reinforce` of the bundled CIFAR-10 sample with the demo teacher on the CPU, as the
#      image's non-root user, into a writable mounted folder; then `dr-build info` and
#      `dr-build verify --teacher` (the replay audit) on that store;
#   3. inside the image (docker/image-check.py): not root; dr, ray, zarr, torch import; every pin
#      of docker/constraints.txt and TORCH_PINS is the installed version; no pip configuration and
#      none of this machine's extra CA certificates were left in the image;
#   4. on this machine: docker/constraints.txt equals the project venv's versions (what the test
#      suite runs with), and the same build run from the venv writes the same store byte for byte;
#   5. the image's size.
# Writes docker/results/image-test.txt. Settings (environment): IMAGE, PYTHON (the venv's python).
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"
smoke_setup test
ASSETS="$REPO/examples/assets"
TEACHER="python:dr.teachers.zoo:cifar_resnet@$ASSETS/teacher/cifar_resnet20.safetensors?depth=20&width=16"
BUILD_ARGS=(--policy cifar --teacher "$TEACHER" --views 8 --topk 5 --chunk-size 128 --device cpu --overwrite)
HOST_CA=${HOST_CA_DIR:-/usr/local/share/ca-certificates}
DR_BUILD=${DR_BUILD:-$(dirname "$(command -v "$PYTHON")")/dr-build}
# Paths inside the container are the host's, so the store records the same source and teacher paths
# as a build from the venv. No network: a private local Ray needs only loopback.
# /dev/shm above Ray's default object store (30% of memory), or Ray falls back to /tmp.
RUN=("${PODMAN[@]}" run --rm "${PODMAN_ULIMITS[@]}" --network none --shm-size="${DR_SHM_SIZE:-10g}"
    -v "$ASSETS:$ASSETS:ro" -v "$t/out:$t/out:rw")
report="$RESULTS/image-test.txt"
show() { sed "s#$REPO#<repo>#g"; }
failed=()

step() {  # step NAME COMMAND...: run, log the command and its output, remember a failure
    local name=$1 rc=0 s
    shift
    s=$(date +%s)
    {
        echo
        echo "### $name"
        echo "\$ $*" | show
    } | tee -a "$report"
    "${NICE[@]}" "$@" >"$t/step.log" 2>&1 || rc=$?
    # Ray's and tqdm's carriage-return progress lines: keep the last state of each
    tr '\r' '\n' <"$t/step.log" | grep -v -E '^\s*$' | show | tee -a "$report"
    echo "(exit $rc, $(( $(date +%s) - s )) s)" | tee -a "$report"
    [ "$rc" = 0 ] || failed+=("$name")
}

id=$("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$IMAGE")
size=$("${BUILDAH[@]}" images --noheading --format '{{.Size}}' "$IMAGE")
{
    echo "# make image-test ($(basename "$0")): $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores, no GPU"
    echo "image: $IMAGE"
    echo "id:    $id"
    echo "size:  $size"
    echo "run:   $(podman --version), runtime ${PODMAN_RUNTIME:-runc}, storage $STORAGE_DRIVER; <repo> = the repository"
} | tee "$report"

step "dr-build --help (entry point + default command)" "${RUN[@]}" "$IMAGE"
step "dr-build reinforce (CPU, image user, mounted output folder)" \
    "${RUN[@]}" "$IMAGE" reinforce "$ASSETS/cifar10-sample" "${BUILD_ARGS[@]}" --out "$t/out/image.zarr"
step "dr-build info" "${RUN[@]}" "$IMAGE" info "$t/out/image.zarr"
step "dr-build verify --teacher (integrity + replay audit)" \
    "${RUN[@]}" "$IMAGE" verify "$t/out/image.zarr" --teacher "$TEACHER"
step "store files owned by the image's user" stat -c '%u:%g %n' "$t/out/image.zarr" "$t/out/image.zarr/zarr.json"
step "inside the image: user, imports, pinned versions, no build-time pip config or CA" \
    "${RUN[@]}" -v "$REPO/docker:/checks:ro" -v "$HOST_CA:/host-ca:ro" --entrypoint python "$IMAGE" \
    /checks/image-check.py /checks/constraints.txt "$TORCH_PINS" /host-ca
step "docker/constraints.txt equals the venv the test suite runs with" "$PYTHON" "$REPO/docker/pin-constraints.py" --check
step "the same build from the venv" "$DR_BUILD" reinforce "$ASSETS/cifar10-sample" "${BUILD_ARGS[@]}" --out "$t/out/venv.zarr"
step "image store == venv store" "$PYTHON" "$REPO/docker/compare-stores.py" "$t/out/image.zarr" "$t/out/venv.zarr"

{
    echo
    echo "### summary"
    echo "image $IMAGE, id $(echo "${id#sha256:}" | cut -c1-12), size $size"
    if [ ${#failed[@]} = 0 ]; then echo "image-test: all steps passed"; else printf 'image-test: FAILED: %s\n' "${failed[@]}"; fi
} | tee -a "$report"
[ ${#failed[@]} = 0 ]
