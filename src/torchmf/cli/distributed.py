"""``torchmf train --nproc N`` and ``torchrun ... -m torchmf train``: the distributed fit from the command line."""

from __future__ import annotations

import argparse
import time

from torchmf.cli import common

__all__ = ["add_options", "run", "wanted"]


def add_options(parser: argparse.ArgumentParser) -> None:
    """The distributed-training options of ``torchmf train``."""
    g = parser.add_argument_group(
        "distributed training",
        "DATA may be a folder of part files (CSV/TSV/Parquet); each rank reads its own. Under torchrun "
        "(torchrun --nproc-per-node N -m torchmf train ...) the world comes from torchrun.",
    )
    g.add_argument("--nproc", type=int, metavar="N", help="train on N local processes (gloo on 127.0.0.1); "
                   "--checkpoint-dir/--checkpoint-every/--resume apply as to a single-process fit")
    g.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="fail the job when a collective waits this long for a rank (default 50)")
    g.add_argument("--exchange", choices=("auto", "all_gather", "all_to_all"), default="auto",
                   help="how ALS/iALS ranks get the other side's factors: all_gather of the whole tables, or "
                   "all_to_all of only the rows each rank's interactions reference; auto (default) takes "
                   "all_gather while the tables fit in a quarter of each rank's share of memory")


def wanted(args: argparse.Namespace) -> bool:
    """True when this ``train`` run is distributed: ``--nproc`` or launched by torchrun."""
    from torchmf.distributed.job import under_launcher

    return args.nproc is not None or under_launcher()


def run(args: argparse.Namespace) -> int:
    from torchmf.distributed import fit
    from torchmf.distributed.job import DEFAULT_TIMEOUT

    if args.validation is not None or args.plot or getattr(args, "auto", None) is not None:
        raise common.CLIError("--validation, --plot and --auto are not available in distributed training")
    if args.nproc is not None and args.nproc < 1:
        raise common.CLIError(f"--nproc must be a positive integer, got {args.nproc}")
    est = common.estimator_from_args(args)
    read = dict(sep=common._sep(args.sep), columns=common._columns(args.columns), user_col=args.user_col,
                item_col=args.item_col, rating_col=args.rating_col, timestamp_col=args.timestamp_col,
                implicit=args.implicit, duplicates=args.duplicates)
    start = time.perf_counter()
    model = fit(est, args.data, world_size=args.nproc, output=args.output, overwrite=True,
                timeout=DEFAULT_TIMEOUT if args.dist_timeout is None else args.dist_timeout,
                checkpoint_every=args.checkpoint_every, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                exchange=args.exchange, **read)
    if model is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    hp = model.effective_params
    world = model.extras_.get("distributed", {}).get("world_size", 1)
    print(f"trained {hp['solver'].upper()} with {hp['factors']} factors on {len(model.user_map):,} users x "
          f"{len(model.item_map):,} items across {world} process{'es' if world != 1 else ''} "
          f"in {time.perf_counter() - start:.1f} s")
    if model.history_:
        print(f"final training loss: {model.history_[-1]['train_loss']:.4f}")
    print(f"model saved to {args.output}")
    return 0
