"""Other programs on the same host, for test_interference.py (each runs in its own process).

``cluster``: another program's Ray (``ray.cluster_utils.Cluster``, which also records its
address in /tmp/ray/ray_current_cluster, where a plain ``ray.init()`` would find it); prints
``{"address": ..., "node": <its node id>}``, stops when a line arrives on stdin, prints ``{"stopped": true}``.

``build``: a build through the library, started the way ``dr-build`` starts one (no Ray in
the process yet, so the build starts its own); after its first chunk it writes ``--paused``
and waits for ``--go`` to exist, so the test can stop the other program's cluster mid-build.
Prints the result as one JSON line.
"""

import argparse
import json
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["cluster", "build"])
p.add_argument("--source")
p.add_argument("--teacher")
p.add_argument("--out")
p.add_argument("--paused")
p.add_argument("--go")
args = p.parse_args()

if args.mode == "cluster":
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    print(json.dumps({"address": cluster.address, "node": cluster.head_node.node_id}), flush=True)
    sys.stdin.readline()
    cluster.shutdown()
    print(json.dumps({"stopped": True}), flush=True)
    sys.exit(0)

from dr.builder import BuildConfig, reinforce  # noqa: E402 - only the build mode needs torch


def pause_once(chunk: int) -> None:
    paused = Path(args.paused)
    if paused.exists():
        return
    paused.write_text(str(chunk))
    deadline = time.monotonic() + 120
    while not Path(args.go).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


config = BuildConfig(source=args.source, teachers=[args.teacher], policy="cifar", views=4, topk=3, out=args.out, chunk_size=16, workers=1)
result = reinforce(config, progress=False, on_chunk=pause_once)
print(json.dumps({"complete": result.complete, "computed": result.chunks_computed, "workers": result.workers}), flush=True)
