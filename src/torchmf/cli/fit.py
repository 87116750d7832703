"""``torchmf train``: read a ratings file, fit, report validation metrics, save."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from torchmf.cli import common, distributed
from torchmf.cli.plot import plot_histories, prepare_plot

__all__ = ["add_parser", "holdout", "validation_metrics"]

_DESCRIPTION = """\
Train a matrix-factorization model on a ratings file and save it to a folder.

The file is CSV, TSV, '::'-separated or Parquet; columns are recognised by
name (user/userId, item/movieId, rating, timestamp, ...) or, without a header,
taken as user,item[,rating[,timestamp]]. Use --columns for other layouts.
"""

_EXAMPLES = """\
examples:
  torchmf train ratings.csv -o model --validation 0.2
  torchmf train u.data -o model --columns user,item,rating,timestamp --factors 64 --epochs 10
  torchmf train plays.tsv -o model --user-col listener --item-col artist --implicit
  torchmf train ratings.csv -o model --validation 0.2 --plot curves.png
  torchmf train parts/ -o model --nproc 4 --checkpoint-every 2      # 4 local processes
  torchrun --nproc-per-node 8 --nnodes 2 --rdzv-endpoint HOST:29500 -m torchmf train parts/ -o model
"""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        parents=parents,
        help="train a model on a ratings file and save it",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="ratings file (CSV, TSV, '::' or Parquet)")
    p.add_argument("-o", "--output", metavar="MODEL_DIR", required=True, help="folder to save the model to")
    p.add_argument(
        "--validation",
        metavar="FRACTION",
        type=float,
        help="hold out this fraction of each user's ratings to report validation metrics (e.g. 0.2)",
    )
    p.add_argument("-k", type=int, default=10, help="cut-off of the validation ranking metrics (default 10)")
    p.add_argument("--plot", metavar="FILE.png", help="write learning curves (loss, validation error per epoch)")
    common.add_reading_options(p)
    common.add_hyperparameters(p)
    distributed.add_options(p)
    p.set_defaults(func=run)


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise common.CLIError(f"--validation must be a fraction between 0 and 1 (exclusive), got {fraction:g}")


def holdout(data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Per-user holdout (torchmf.data.split.user_split), else a seeded random split."""
    from torchmf.errors import DataError

    check_fraction(fraction)
    try:
        from torchmf.data.split import user_split
    except ImportError:  # pragma: no cover - split module missing
        rng = np.random.default_rng(seed)
        test = rng.random(len(data)) < fraction
        if test.all() or not test.any():
            raise common.CLIError(f"--validation {fraction:g} leaves no training or no validation data") from None
        return data.subset(~test), data.subset(test)
    try:
        return user_split(data, fraction, seed=seed)
    except DataError as exc:
        raise common.CLIError(f"--validation {fraction:g}: {exc}") from None


def validation_metrics(model: Any, train: Any, test: Any, k: int) -> dict[str, float]:
    """RMSE/MAE of the kept epoch, plus ranking metrics when torchmf.evaluation has ``evaluate``."""
    out: dict[str, float] = {}
    try:
        from torchmf.evaluation import evaluate
    except ImportError:
        evaluate = None
    if evaluate is not None:
        out.update(evaluate(model, test, train=train, k=k))
    elif model.history_:
        best = model.best_epoch_ or len(model.history_)
        row = model.history_[best - 1]
        out.update({k_[4:]: v for k_, v in row.items() if k_.startswith("val_")})
    return out


def run(args: argparse.Namespace) -> int:
    if distributed.wanted(args):
        return distributed.run(args)
    common.check_k(args.k)
    if args.validation is not None:
        check_fraction(args.validation)
    if args.plot:
        prepare_plot(args.plot)  # fail before training, not after
    est = common.estimator_from_args(args)
    data = common.read_data(args.data, args)
    kind = "implicit" if data.implicit else "explicit"
    print(f"read {len(data):,} {kind} interactions from {args.data}: {data.n_users:,} users x {data.n_items:,} items")
    train, test = data, None
    if args.validation is not None:
        train, test = holdout(data, args.validation, est.get_params()["seed"])
        print(
            f"holding out {args.validation:.0%} of each user's interactions: "
            f"{len(train):,} for training, {len(test):,} for validation"
        )
    start = time.perf_counter()
    est.fit(train, validation=test)
    took = time.perf_counter() - start
    hp = est.effective_params
    ran = len(est.history_)
    best = f", best epoch {est.best_epoch_}" if est.best_epoch_ is not None else ""
    print(
        f"trained {hp['solver'].upper()} with {hp['factors']} factors for {ran} "
        f"{'sweep' if hp['solver'] == 'als' else 'epoch'}{'s' if ran != 1 else ''} in {took:.1f} s{best}"
    )
    if test is not None:
        print(f"validation metrics (k={args.k}):")
        print(_indent(common.metrics_table(validation_metrics(est, train, test, args.k))))
    elif est.history_:
        print(f"final training loss: {est.history_[-1]['train_loss']:.4f}")
    est.save(args.output)
    print(f"model saved to {args.output}")
    if args.plot:
        where = plot_histories(args.plot, [est.history_], [""])
        print(f"learning curves written to {where}")
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
