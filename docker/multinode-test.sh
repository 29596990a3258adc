#!/usr/bin/env bash
# A multi-node rehearsal from the image: a Ray head container and a Ray worker container (podman,
# host network, each its own node with 1 CPU), one `dr-build reinforce --address ray://HEAD:PORT`
# submitted to them from a third container (a Ray Client driver: a driver outside the cluster's
# nodes, as from a laptop) with two teacher workers, one per node; then the store compared byte for
# byte with the same build run from the project's venv on a private local Ray.
# Writes docker/results/multinode.txt. Needs `make image` first; not part of `make image-test`.
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"
smoke_setup multinode
ASSETS="$REPO/examples/assets"
TEACHER="python:dr.teachers.zoo:cifar_resnet@$ASSETS/teacher/cifar_resnet20.safetensors?depth=20&width=16"
BUILD_ARGS=(--policy cifar --teacher "$TEACHER" --views 8 --topk 5 --chunk-size 128 --device cpu --overwrite)
DR_BUILD=${DR_BUILD:-$(dirname "$(command -v "$PYTHON")")/dr-build}
TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
# Every port a node listens on, free now on this host (the containers share its network).
read -r GCS CLIENT H_AGENT H_GRPC H_ENV H_METRICS H_NODE H_OBJ W_AGENT W_GRPC W_ENV W_METRICS W_NODE W_OBJ < <(
    "$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(14)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
HEAD=dr-multinode-head
WORKER=dr-multinode-worker
RUN=("${PODMAN[@]}" run "${PODMAN_ULIMITS[@]}" --network host --shm-size=2g
    -e RAY_AUTH_MODE=token -e "RAY_AUTH_TOKEN=$TOKEN" -e RAY_USAGE_STATS_ENABLED=0
    -v "$ASSETS:$ASSETS:ro" -v "$t/out:$t/out:rw")
NODE=(--num-cpus=1 --num-gpus=0 --object-store-memory=500000000 --disable-usage-stats --block)
report="$RESULTS/multinode.txt"
show() { sed "s#$REPO#<repo>#g; s#$TOKEN#<token>#g"; }

cleanup() {
    "${PODMAN[@]}" rm -f -t 5 "$HEAD" "$WORKER" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

{
    echo "# multi-node rehearsal ($(basename "$0")): $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores, no GPU"
    echo "image: $IMAGE ($("${BUILDAH[@]}" images --noheading --format '{{.ID}}' "$IMAGE"))"
    echo "nodes: two containers on the host network, 1 CPU each; token auth (one RAY_AUTH_TOKEN)"
} | tee "$report"

log "start the head ($HEAD) and the worker ($WORKER)"
"${NICE[@]}" "${RUN[@]}" -d --name "$HEAD" --entrypoint ray "$IMAGE" start --head "${NODE[@]}" \
    --port="$GCS" --ray-client-server-port="$CLIENT" --include-dashboard=false \
    --dashboard-agent-listen-port="$H_AGENT" --dashboard-agent-grpc-port="$H_GRPC" --runtime-env-agent-port="$H_ENV" \
    --metrics-export-port="$H_METRICS" --node-manager-port="$H_NODE" --object-manager-port="$H_OBJ" \
    --min-worker-port=21000 --max-worker-port=21499 >/dev/null
"${NICE[@]}" "${RUN[@]}" -d --name "$WORKER" --entrypoint ray "$IMAGE" start --address="127.0.0.1:$GCS" "${NODE[@]}" \
    --dashboard-agent-listen-port="$W_AGENT" --dashboard-agent-grpc-port="$W_GRPC" --runtime-env-agent-port="$W_ENV" \
    --metrics-export-port="$W_METRICS" --node-manager-port="$W_NODE" --object-manager-port="$W_OBJ" \
    --min-worker-port=21500 --max-worker-port=21999 >/dev/null

nodes=0
for _ in $(seq 120); do
    nodes=$("${PODMAN[@]}" exec "$HEAD" python -c "
import ray
ray.init(address='127.0.0.1:$GCS', logging_level='ERROR')
print(sum(n['Alive'] for n in ray.nodes()))" 2>/dev/null | tail -1) || true
    [ "$nodes" = 2 ] && break
    sleep 5
done
if [ "$nodes" != 2 ]; then
    echo "the cluster did not reach 2 nodes (saw: ${nodes:-none})" | tee -a "$report"
    "${PODMAN[@]}" logs "$HEAD" 2>&1 | tail -20 | show
    "${PODMAN[@]}" logs "$WORKER" 2>&1 | tail -20 | show
    exit 1
fi
{
    echo
    echo "### ray status (head container)"
    "${PODMAN[@]}" exec "$HEAD" ray status --address "127.0.0.1:$GCS" 2>&1 | grep -v -E '^\s*$' | show
} | tee -a "$report"

rc=0
{
    echo
    echo "### one build submitted to the cluster from a third container"
    echo "\$ dr-build reinforce <repo>/examples/assets/cifar10-sample ${BUILD_ARGS[*]} --address ray://127.0.0.1:CLIENT_PORT --workers 2 --cpus-per-worker 1 --out .../cluster.zarr" | show
} | tee -a "$report"
"${NICE[@]}" "${RUN[@]}" --rm "$IMAGE" -v reinforce "$ASSETS/cifar10-sample" "${BUILD_ARGS[@]}" \
    --address "ray://127.0.0.1:$CLIENT" --workers 2 --cpus-per-worker 1 --out "$t/out/cluster.zarr" >"$t/cluster.log" 2>&1 || rc=$?
tr '\r' '\n' <"$t/cluster.log" | grep -v -E '^\s*$' | show | tee -a "$report"
echo "(exit $rc)" | tee -a "$report"

{
    echo
    echo "### where the teacher workers ran: Ray actors named in each node's worker logs"
    for c in "$HEAD" "$WORKER"; do
        echo "$c: $("${PODMAN[@]}" exec "$c" sh -c 'cat /tmp/ray/session_latest/logs/worker-*.out 2>/dev/null' | grep -o ':actor_name:[A-Za-z_]*' | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
    done
    echo
    echo "### the same build from the venv (private local Ray)"
} | tee -a "$report"
"${NICE[@]}" "$DR_BUILD" reinforce "$ASSETS/cifar10-sample" "${BUILD_ARGS[@]}" --out "$t/out/local.zarr" 2>&1 \
    | tr '\r' '\n' | grep -E '^complete' | show | tee -a "$report"
{
    echo
    echo "### cluster store == local store"
} | tee -a "$report"
if [ "$rc" = 0 ]; then
    "$PYTHON" "$REPO/docker/compare-stores.py" "$t/out/cluster.zarr" "$t/out/local.zarr" | tee -a "$report" || rc=1
else
    echo "(no cluster store to compare)" | tee -a "$report"
fi
echo | tee -a "$report"
if [ "$rc" = 0 ]; then echo "multinode: passed" | tee -a "$report"; else echo "multinode: FAILED" | tee -a "$report"; fi
[ "$rc" = 0 ]
