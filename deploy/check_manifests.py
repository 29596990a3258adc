"""Check the Kubernetes manifests under deploy/ (``make lint``; no network, no cluster).

Every YAML document must parse. A KubeRay ``RayJob`` must:
  * use only fields of KubeRay's ray.io/v1 API (v1.6) at the RayJob, cluster and group levels;
  * run ``dr-build reinforce ... --address auto ... --resume`` on the cluster it creates;
  * pin ``rayVersion`` to the Ray version of docker/constraints.txt and enable token auth;
  * run the project's image (``dr:`` tag, the Dockerfile's) in every container;
  * give its head and every worker group a /dev/shm ``emptyDir`` with ``medium: Memory``, and
    every worker container a GPU limit;
  * have pod templates that are valid Kubernetes pod specs (the Kubernetes JSON schemas shipped
    by ``kubernetes-validate``, strict: unknown fields fail).

Usage: python deploy/check_manifests.py [FILE.yaml ...]   (default: every deploy/**/*.yaml)
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KUBERNETES_VERSION = "1.33.0"  # the pod schema to check against (fields used exist since long before)

# Field names of KubeRay's ray.io/v1 API (KubeRay v1.6 CRD reference).
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
CLUSTER_SPEC = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "upgradeStrategy",
    "workerGroupSpecs",
}  # fmt: skip
HEAD_SPEC = {"enableIngress", "headService", "labels", "rayStartParams", "resources", "serviceType", "template"}
WORKER_SPEC = {
    "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
    "replicas", "resources", "scaleStrategy", "suspend", "template",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def ray_version() -> str:
    """The Ray version the image installs (docker/constraints.txt)."""
    text = (REPO / "docker" / "constraints.txt").read_text()
    m = re.search(r"^ray==(\S+)$", text, re.M)
    if not m:
        raise SystemExit("docker/constraints.txt pins no ray version")
    return m.group(1)


def _unknown(where: str, obj: Any, allowed: set[str]) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a mapping, got {type(obj).__name__}"]
    return [f"{where}.{k}: not a field of KubeRay's ray.io/v1 API" for k in sorted(set(obj) - allowed)]


def _pod_problems(where: str, template: Any, *, gpu: bool, shm: bool) -> list[str]:
    """A pod template: valid as a Kubernetes pod (strict schema), the project's image, /dev/shm."""
    import kubernetes_validate

    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return [f"{where}.template.spec: missing"]
    spec = template["spec"]
    problems = []
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template.get("metadata", {}), "name": "check"}, "spec": spec}
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        problems.append(f"{where}.template.{path}: {e.message} (Kubernetes pod schema)")
    containers = spec.get("containers") or []
    for c in containers:
        image = str(c.get("image", ""))
        if not re.fullmatch(r"(.+/)?dr:[\w.-]+", image):
            problems.append(f"{where}: container {c.get('name')!r} runs {image!r}, not the project's image (dr:TAG, see Dockerfile)")
    if not containers:
        return problems
    main = containers[0]  # KubeRay's Ray container is the first
    if shm:
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        mounts = [m for m in main.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
        if not mounts:
            problems.append(f"{where}: container {main.get('name')!r} mounts nothing at /dev/shm (Ray's object store lives there)")
        for m in mounts:
            source = (volumes.get(m.get("name")) or {}).get("emptyDir")
            if not isinstance(source, dict) or source.get("medium") != "Memory":
                problems.append(f"{where}: /dev/shm must be an emptyDir volume with medium: Memory")
    if gpu:
        limits = (main.get("resources") or {}).get("limits") or {}
        if not any(k.endswith("/gpu") for k in limits):
            problems.append(f"{where}: container {main.get('name')!r} has no GPU limit (nvidia.com/gpu)")
    return problems


def check_rayjob(doc: dict[str, Any], name: str) -> list[str]:
    problems: list[str] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"{name}: apiVersion must be ray.io/v1, got {doc.get('apiVersion')!r}")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append(f"{name}: metadata.name missing")
    spec = doc.get("spec")
    problems += _unknown(f"{name}.spec", spec, RAYJOB_SPEC)
    if not isinstance(spec, dict):
        return problems
    entry = shlex.split(str(spec.get("entrypoint", "")))
    if entry[:2] != ["dr-build", "reinforce"]:
        problems.append(f"{name}.spec.entrypoint: must run `dr-build reinforce ...`, got {entry[:2]}")
    if "--address" not in entry or entry[entry.index("--address") + 1 : entry.index("--address") + 2] != ["auto"]:
        problems.append(f"{name}.spec.entrypoint: needs --address auto (the driver joins the job's cluster)")
    for flag in ("--out", "--teacher", "--resume"):
        if flag not in entry:
            problems.append(f"{name}.spec.entrypoint: needs {flag}")
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        problems.append(f"{name}.spec.submissionMode: one of {sorted(SUBMISSION_MODES)}")
    if "submitterPodTemplate" in spec:
        problems += _pod_problems(f"{name}.spec.submitterPodTemplate", spec["submitterPodTemplate"], gpu=False, shm=False)
    cluster = spec.get("rayClusterSpec")
    if cluster is None:
        return problems + [f"{name}.spec.rayClusterSpec: missing (this manifest must create its cluster)"]
    problems += _unknown(f"{name}.spec.rayClusterSpec", cluster, CLUSTER_SPEC)
    if not isinstance(cluster, dict):
        return problems
    if str(cluster.get("rayVersion")) != ray_version():
        problems.append(f"{name}: rayVersion {cluster.get('rayVersion')!r} is not the image's Ray {ray_version()} (docker/constraints.txt)")
    if (cluster.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{name}: rayClusterSpec.authOptions.mode must be token")
    head = cluster.get("headGroupSpec")
    problems += _unknown(f"{name}.headGroupSpec", head, HEAD_SPEC)
    if isinstance(head, dict):
        problems += _pod_problems(f"{name}.headGroupSpec", head.get("template"), gpu=False, shm=True)
    groups = cluster.get("workerGroupSpecs") or []
    if not groups:
        problems.append(f"{name}: no workerGroupSpecs (the teachers run on GPU workers)")
    for i, g in enumerate(groups):
        where = f"{name}.workerGroupSpecs[{i}]"
        problems += _unknown(where, g, WORKER_SPEC)
        if isinstance(g, dict):
            if not g.get("groupName"):
                problems.append(f"{where}.groupName: missing")
            problems += _pod_problems(where, g.get("template"), gpu=True, shm=True)
    return problems


def check_file(path: Path) -> list[str]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        return [f"{path}: not valid YAML: {e}"]
    problems = []
    for i, doc in enumerate(docs):
        name = f"{path.name}[{i}]"
        if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("apiVersion"):
            problems.append(f"{name}: a Kubernetes object needs apiVersion and kind")
        elif doc["kind"] == "RayJob":
            problems += check_rayjob(doc, f"{name} RayJob {(doc.get('metadata') or {}).get('name')}")
    return problems


def main(argv: Iterable[str]) -> int:
    files = [Path(a) for a in argv] or sorted(HERE.rglob("*.yaml"))
    problems = [p for f in files for p in check_file(f)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"ok: {', '.join(str(f.relative_to(REPO) if f.is_absolute() else f) for f in files)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
