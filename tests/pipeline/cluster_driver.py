"""Run one build on a real two-node Ray cluster on this host (``ray.cluster_utils.Cluster``).

Used by test_cluster.py in a subprocess (the test suite's own Ray session stays untouched).
Prints one JSON line: the workers' nodes and the build result.
"""

import argparse
import json

import ray
from ray.cluster_utils import Cluster

from dr.builder import BuildConfig, reinforce

p = argparse.ArgumentParser()
p.add_argument("--source", required=True)
p.add_argument("--teacher", required=True)
p.add_argument("--out", required=True)
p.add_argument("--remove-node-after", type=int, default=0, help="remove the second node after N chunks")
args = p.parse_args()

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
second = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="WARNING")
written = []


def on_chunk(chunk: int) -> None:
    written.append(chunk)
    if args.remove_node_after and len(written) == args.remove_node_after:
        cluster.remove_node(second)


try:
    config = BuildConfig(
        source=args.source,
        teachers=[args.teacher],
        policy="cifar",
        views=4,
        topk=3,
        out=args.out,
        chunk_size=8,
        workers=2,
        cpus_per_worker=1,
        address=cluster.address,
    )
    result = reinforce(config, progress=False, on_chunk=on_chunk)
    nodes = sorted({n["NodeID"] for n in ray.nodes()})
    print(
        json.dumps(
            {
                "workers": result.workers,
                "complete": result.complete,
                "computed": result.chunks_computed,
                "cluster_nodes_at_start": 2,
                "alive_nodes_at_end": len([n for n in ray.nodes() if n["Alive"]]),
            }
        )
    )
finally:
    ray.shutdown()
    cluster.shutdown()
