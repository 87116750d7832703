"""``torchmf train``: read a ratings file, fit, report validation metrics, save."""

from __future__ import annotations

import argparse
import time
from typing import Any

from torchmf.cli import common, distributed
from torchmf.cli.plot import plot_histories, prepare_plot

__all__ = ["add_parser", "holdout", "run_auto", "validation_metrics"]

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
  torchmf train ratings.csv -o model --auto 60        # tune with Optuna for 60 s, then refit
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
        help="hold out this fraction of each user's interactions: report validation metrics, choose the number "
             "of epochs (with --early-stopping), then refit on all the data for that many epochs (e.g. 0.2)",
    )
    p.add_argument(
        "--auto",
        metavar="SECONDS",
        type=float,
        help="tune with Optuna (torchmf.autotune) within this many seconds, search and refit together, on a "
             "validation split carved from DATA: the solver too (every solver of the loss with a search space, "
             "e.g. ALS, SGD and Gibbs for mse) unless --solver names one; other hyperparameter options set the "
             "values that are not searched",
    )
    p.add_argument(
        "--auto-params",
        metavar="NAME,NAME",
        help="with --auto: search only these hyperparameters of the search space (e.g. confidence,alpha for "
             "iALS's confidence setting); the others keep their defaults or the values given",
    )
    p.add_argument(
        "--auto-ensemble",
        metavar="N",
        type=int,
        help="with --auto: refit the N best finalists and save their average, one model of their factors side "
             "by side (default 3 for ranking losses, 1 for rating losses; 1 saves the single best)",
    )
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="with --validation: save the model fitted on the training part instead of refitting")
    p.add_argument("-k", type=int, default=10, help="cut-off of the validation ranking metrics (default 10)")
    p.add_argument("--plot", metavar="FILE.png", help="write learning curves (loss, validation error per epoch)")
    common.add_reading_options(p)
    common.add_hyperparameters(p)
    add_checkpoint_options(p)
    distributed.add_options(p)
    p.set_defaults(func=run)


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise common.CLIError(f"--validation must be a fraction between 0 and 1 (exclusive), got {fraction:g}")


def holdout(data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Per-user holdout (torchmf.data.split.user_split), else a seeded random split."""
    from torchmf.data.split import user_split
    from torchmf.errors import DataError

    check_fraction(fraction)
    try:
        return user_split(data, fraction, seed=seed)
    except DataError as exc:
        raise common.CLIError(f"--validation {fraction:g}: {exc}") from None


def validation_metrics(model: Any, train: Any, test: Any, k: int) -> dict[str, float]:
    """Rating (rating models only) and ranking metrics of the kept model on the validation data."""
    from torchmf.evaluation import evaluate

    return dict(evaluate(model, test, train=train, k=k))


def run(args: argparse.Namespace) -> int:
    if distributed.wanted(args):
        return distributed.run(args)
    common.check_k(args.k)
    if args.validation is not None:
        check_fraction(args.validation)
    if args.plot:
        prepare_plot(args.plot)  # fail before training, not after
    checkpoint_kwargs(args)  # fail before reading the data, not after
    est = common.estimator_from_args(args)
    if args.auto is not None:
        check_auto(args, est)
    elif args.auto_params is not None or args.auto_ensemble is not None:
        flag = "--auto-params" if args.auto_params is not None else "--auto-ensemble"
        raise common.CLIError(f"{flag} goes with --auto SECONDS")
    data = common.read_data(args.data, args)
    if args.auto is not None:
        return run_auto(args, est, data)
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
    est.fit(train, validation=test, **checkpoint_kwargs(args))
    took = time.perf_counter() - start
    hp = est.effective_params
    ran = len(est.history_)
    best = f", best epoch {est.best_epoch_}" if est.best_epoch_ is not None else ""
    print(
        f"trained {hp['solver'].upper()} with {hp['factors']} factors for {ran} "
        f"{'sweep' if hp['solver'] in ('als', 'gibbs') else 'epoch'}{'s' if ran != 1 else ''} in {took:.1f} s{best}"
    )
    curves = est.history_
    if test is not None:
        metrics = validation_metrics(est, train, test, args.k)
        print(f"validation metrics (k={args.k}):")
        print(_indent(common.metrics_table(metrics)))
        if args.refit:
            est = refit(est, data, metrics, args.validation)
    elif est.history_:
        print(f"final training loss: {est.history_[-1]['train_loss']:.4f}")
    est.save(args.output)
    print(f"model saved to {args.output}")
    if args.plot:
        where = plot_histories(args.plot, [curves], [""])
        print(f"learning curves written to {where}")
    return 0


def check_auto(args: argparse.Namespace, est: Any) -> None:
    if not args.auto > 0:
        raise common.CLIError(f"--auto must be a positive number of seconds, got {args.auto:g}")
    if args.validation is not None:
        raise common.CLIError("--auto carves its own validation split; leave out --validation")
    if args.auto_ensemble is not None and args.auto_ensemble < 1:
        raise common.CLIError(f"--auto-ensemble must be a positive number of models, got {args.auto_ensemble}")
    if args.auto_params is not None:
        names = [n.strip().replace("-", "_") for n in args.auto_params.split(",")]
        if not all(names):
            raise common.CLIError(f"--auto-params {args.auto_params!r}: expected NAME[,NAME...]")
        from torchmf.evaluation.autotune import search_spaces

        try:
            search_spaces(est, names)  # fail before reading the data
        except ValueError as exc:
            msg = str(exc)
            raise common.CLIError(f"--auto-{msg}" if msg.startswith("params") else msg) from None
        args.auto_params = names
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise common.CLIError("--auto needs optuna: pip install 'torchmf[tune]'") from None


def run_auto(args: argparse.Namespace, est: Any, data: Any) -> int:
    """``--auto SECONDS``: autotune, report the trials, save the refitted best model."""
    from torchmf.evaluation.autotune import autotune

    kind = "implicit" if data.implicit else "explicit"
    print(f"read {len(data):,} {kind} interactions from {args.data}: {data.n_users:,} users x {data.n_items:,} items")
    p = est.get_params()
    model = autotune(est, data, budget_s=args.auto, seed=p["seed"], k=args.k, verbose=p["verbose"],
                     params=args.auto_params, ensemble=args.auto_ensemble)
    info = model.extras_["autotune"]
    states = model.tuning_["state"].value_counts().to_dict()
    print(f"tuned {model.effective_params['solver'].upper()} ({p['loss']}) in {info['seconds']:.1f} s of "
          f"{args.auto:g}: {info['trials']} trials ({', '.join(f'{n} {s}' for s, n in states.items())})")
    best = ", ".join(f"{k}={common.plain(v)}" for k, v in info["params"].items())
    print(f"best: {best}, {info['epochs']} epochs; validation {info['metric']} {info['validation']:.4f}")
    if len(info["members"]) > 1:
        print(f"averaged with the next {len(info['members']) - 1} finalists (trials "
              f"{', '.join(str(m['trial']) for m in info['members'][1:])}): one model of "
              f"{model.effective_params['factors']} factors")
    model.save(args.output)
    print(f"refitted on all {len(data):,} interactions; model saved to {args.output}")
    if args.plot:
        where = plot_histories(args.plot, [model.history_], [""])
        print(f"learning curves written to {where}")
    return 0


def refit(est: Any, data: Any, metrics: dict[str, Any], fraction: float) -> Any:
    """Refit on all of ``data`` for the epoch count validation chose; the validation run is kept in ``extras_``."""
    epochs = est.best_epoch_ or len(est.history_)
    final = type(est)(**{**est.get_params(), "epochs": epochs, "early_stopping": None})
    start = time.perf_counter()
    final.fit(data)
    print(f"refitted on all {len(data):,} interactions for {epochs} epoch{'s' if epochs != 1 else ''} "
          f"(the count validation chose) in {time.perf_counter() - start:.1f} s; the saved model is this refit")
    final.extras_["validation"] = {
        "fraction": fraction, "epochs": epochs,
        "metrics": {k: common.plain(v) for k, v in metrics.items()}, "history": est.history_,
    }
    return final


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# ---------------------------------------------------------------------- resumable training
def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint-dir``, ``--checkpoint-every``, ``--resume`` (the distributed fit's names)."""
    g = parser.add_argument_group(
        "resumable training",
        "Checkpoints are written atomically; an interrupted run (Ctrl-C, kill) started again with --resume "
        "continues from the last complete one and ends with the same model (bitwise on the CPU). With "
        "--validation they cover the holdout fit, not the refit.",
    )
    g.add_argument("--checkpoint-dir", metavar="DIR", help="where checkpoints go (default: MODEL_DIR.ckpt)")
    g.add_argument("--checkpoint-every", type=int, metavar="K", help="write a resumable checkpoint every K epochs "
                   "(default 1 when --checkpoint-dir or --resume is given)")
    g.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")


def checkpoint_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``fit`` keyword arguments from the checkpoint options (none when none was given)."""
    every, folder = args.checkpoint_every, args.checkpoint_dir
    if every is None and folder is None and not args.resume:
        return {}
    if every is not None and every < 1:
        raise common.CLIError(f"--checkpoint-every must be a positive integer, got {every}")
    return {"checkpoint_dir": folder or f"{str(args.output).rstrip('/')}.ckpt", "checkpoint_every": every or 1,
            "resume": args.resume}
