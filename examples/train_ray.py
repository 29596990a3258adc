#!/usr/bin/env python
"""Train the timm student of examples/train_timm.py data-parallel with Ray Train.

    python examples/train_ray.py --store runs/demo.zarr --model resnet18 --epochs 30 \\
        --num-workers 4 --use-gpu --run-dir /shared/ray_results --name student

``TorchTrainer`` starts ``--num-workers`` ranks (one GPU each with ``--use-gpu``); the model is
wrapped in DDP by ``ray.train.torch.prepare_model``. Each rank opens the store itself and
takes its disjoint part of every epoch from ``dr.ChunkAwareSampler(ds, num_replicas=W,
rank=r)`` (a permutation split like ``DistributedSampler``; ``set_epoch`` per epoch), so the
DataLoader is *not* passed through ``prepare_data_loader``. Rank 0 saves a checkpoint (model,
optimizer, scheduler, epoch) after every epoch. A rank that dies restarts the worker group from
that checkpoint (``--max-failures``, default 2), and running the same command again with the
same ``--run-dir``/``--name`` resumes after the last finished epoch (Ray Train restores the
run's latest checkpoint; ``ray.train.get_checkpoint()`` hands it to every rank).

Without ``--address`` a local Ray is started (or the process's Ray is used if already
initialised); ``--address auto`` joins this host's cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLES = str(Path(__file__).resolve().parent)


def train_loop(config: dict[str, Any]) -> None:
    """What every rank runs."""
    sys.path.insert(0, config["examples_dir"])
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader
    from train_timm import build_optimization, build_student, train_epoch

    from dr import ChunkAwareSampler, ReinforcedDataset

    args = argparse.Namespace(**config["args"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    ds = ReinforcedDataset(args.store, args.source, output_size=args.img_size, seed=args.seed)
    sampler = ChunkAwareSampler(ds, num_replicas=world, rank=rank, seed=args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=False)
    model, mean, std = build_student(args, ds.num_classes)
    model = ray.train.torch.prepare_model(model)
    device = str(ray.train.torch.get_device())
    opt, sched = build_optimization(model, args, len(loader))
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        getattr(model, "module", model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"]) + 1
    for epoch in range(start, args.epochs):
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        if config.get("record_dir"):  # tests: which source rows this rank trains on this epoch
            Path(config["record_dir"], f"rank{rank}-epoch{epoch}.json").write_text(json.dumps([int(i) for i in sampler]))
        stats = train_epoch(model, loader, opt, mean, std, device, args.max_steps)
        sched.step(epoch + 1)
        metrics = {"epoch": epoch, "resumed_from": start, "rank0_images": stats["images"], "loss": stats["loss"]}
        with tempfile.TemporaryDirectory() as d:
            saved = None
            if rank == 0:
                state = {
                    "model": getattr(model, "module", model).state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                }
                torch.save(state, os.path.join(d, "state.pt"))
                saved = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=saved)
        if epoch == config.get("fail_after_epoch") and start == 0:  # tests: a crash after a checkpoint
            # let the controller collect the report first (it polls the workers every interval)
            time.sleep(5 * config["poll_s"])
            raise RuntimeError(f"injected failure after epoch {epoch}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, EXAMPLES)
    from train_timm import add_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--num-workers", type=int, default=2, help="data-parallel ranks")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per rank")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--run-dir", default=os.path.abspath("runs/ray_train"), help="Ray Train storage path (checkpoints)")
    p.add_argument("--name", default="student", help="run name; the same name and --run-dir resume")
    p.add_argument("--address", help="Ray cluster to join (auto, ray://head:10001); default: local")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of the worker group from the last checkpoint")
    p.add_argument("--record-dir", help=argparse.SUPPRESS)
    p.add_argument("--fail-after-epoch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help="JSON result path")
    args = p.parse_args(argv)

    import ray
    import ray.cloudpickle
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=args.address or "local", include_dashboard=False)  # default: a private local Ray
    if __name__ != "__main__":  # imported (e.g. by a test): ship this module's code by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainer_only = (
        "num_workers",
        "use_gpu",
        "cpus_per_worker",
        "run_dir",
        "name",
        "address",
        "max_failures",
        "record_dir",
        "fail_after_epoch",
        "out",
    )
    student = {k: v for k, v in vars(args).items() if k not in trainer_only}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "args": student,
            "examples_dir": EXAMPLES,
            "record_dir": args.record_dir,
            "fail_after_epoch": args.fail_after_epoch,
            "poll_s": float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)),  # Ray Train's poll interval
        },
        scaling_config=ScalingConfig(
            num_workers=args.num_workers, use_gpu=args.use_gpu, resources_per_worker={"CPU": args.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=args.name,
            storage_path=os.path.abspath(args.run_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=args.max_failures),
        ),
    )
    result = trainer.fit()
    summary = {
        "metrics": result.metrics,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "error": repr(result.error) if result.error else None,
    }
    print(json.dumps(summary, default=str))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary


if __name__ == "__main__":
    main()
