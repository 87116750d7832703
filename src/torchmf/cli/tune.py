"""``torchmf cv`` (k-fold cross-validation) and ``torchmf tune`` (grid or Optuna search)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pandas as pd

from torchmf.cli import common
from torchmf.cli.plot import plot_folds, prepare_plot

__all__ = ["add_parsers", "parse_assignments"]

_RAW = argparse.RawDescriptionHelpFormatter
_RANKING = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage")
# searched by `tune --optuna` when --space is not given
_DEFAULT_SPACE = {"factors": (8, 128), "reg": (0.01, 2.0)}


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cv", parents=parents, formatter_class=_RAW,
        help="k-fold cross-validation of hyperparameters on a ratings file",
        description="Fit a model on each of k folds and report RMSE, MAE and ranking metrics per fold,\n"
                    "with their mean and standard deviation.",
        epilog="examples:\n  torchmf cv ratings.csv --folds 5 --factors 32\n"
               "  torchmf cv ratings.csv --folds 3 --plot folds.png --format json",
    )
    p.add_argument("data", metavar="DATA", help="ratings file (CSV, TSV, '::' or Parquet)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("-k", type=int, default=10, help="cut-off of the ranking metrics (default 10)")
    p.add_argument("--plot", metavar="FILE.png", help="write per-fold training loss and metrics")
    common.add_format(p)
    common.add_reading_options(p)
    common.add_hyperparameters(p)
    p.set_defaults(func=cv)

    p = sub.add_parser(
        "tune", parents=parents, formatter_class=_RAW,
        help="search hyperparameters (grid or Optuna) on a ratings file",
        description="Score hyperparameter candidates on a per-user validation split (20% of each\n"
                    "user's ratings) and list them best first. Options of the 'model\n"
                    "hyperparameters' group set the values every candidate shares.",
        epilog="examples:\n  torchmf tune ratings.csv --grid factors=16,32,64 reg=0.05,0.1,0.5\n"
               "  torchmf tune ratings.csv --optuna --trials 30 --space factors=8:128 reg=0.01:2 solver=als,sgd\n"
               "  torchmf tune ratings.csv --grid factors=16,64 -o best_model",
    )
    p.add_argument("data", metavar="DATA", help="ratings file (CSV, TSV, '::' or Parquet)")
    p.add_argument("--grid", nargs="+", metavar="NAME=V1,V2", help="values to try, every combination")
    p.add_argument("--optuna", action="store_true", help="Bayesian search with Optuna instead of a grid")
    p.add_argument("--trials", type=int, default=20, help="Optuna trials (default 20)")
    p.add_argument(
        "--space", nargs="+", metavar="NAME=LOW:HIGH",
        help="Optuna ranges (LOW:HIGH) or choices (A,B); default factors=8:128 reg=0.01:2",
    )
    p.add_argument("--metric", help="metric to optimise: rmse (default for ratings), mae, ndcg@K, recall@K, ...")
    p.add_argument("-k", type=int, default=10, help="cut-off of the ranking metrics (default 10)")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience per candidate (default 3)")
    p.add_argument("--top", type=int, default=10, help="show this many best candidates (default 10)")
    p.add_argument("-o", "--output", metavar="MODEL_DIR", help="refit the best candidate on all data and save it")
    common.add_format(p)
    common.add_reading_options(p)
    common.add_hyperparameters(p)
    p.set_defaults(func=tune)


# ---------------------------------------------------------------------- cv
def cv(args: argparse.Namespace) -> int:
    from torchmf.evaluation import cross_validate

    common.check_k(args.k)
    if args.folds < 2:
        raise common.CLIError(f"--folds must be at least 2, got {args.folds}")
    if args.plot:
        prepare_plot(args.plot)
    est = common.estimator_from_args(args)
    data = common.read_data(args.data, args)
    print(f"{args.folds}-fold cross-validation on {len(data):,} interactions from {args.data}", flush=True)
    res = cross_validate(est, data, folds=args.folds, k=args.k, seed=est.get_params()["seed"])
    table = res["folds"].reset_index()
    if args.format == "json":
        print(json.dumps({
            "folds": common.records(table),
            "mean": {k: common.plain(v) for k, v in res["mean"].items()},
            "std": {k: common.plain(v) for k, v in res["std"].items()},
        }, indent=2))
    elif args.format == "csv":
        common.emit(table, "csv")
    else:
        common.emit(table, "table")
        counts = ("fold", "users_evaluated", "users_skipped", "test_items_unknown")
        summary = {k: f"{res['mean'][k]:.4f} +/- {res['std'][k]:.4f}" for k in res["mean"].index if k not in counts}
        print("\nmean +/- std over folds:")
        print("\n".join("  " + ln for ln in common.metrics_table(summary).splitlines()))
    if args.plot:
        metrics = [m for m in ("rmse", "mae", f"ndcg@{args.k}", f"recall@{args.k}") if m in table.columns]
        where = plot_folds(args.plot, table, metrics, res.get("histories"))
        print(f"cross-validation plot written to {where}")
    return 0


# ---------------------------------------------------------------------- tune
def parse_value(text: str) -> Any:
    """``"16"`` -> 16, ``"0.1"`` -> 0.1, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_assignments(items: list[str], flag: str, ranges: bool = False) -> dict[str, Any]:
    """``["factors=16,32", "reg=0.1"]`` -> ``{"factors": [16, 32], "reg": [0.1]}``.

    With ``ranges``, ``LOW:HIGH`` gives a ``(low, high)`` tuple.
    """
    from torchmf.estimator.params import Params

    out: dict[str, Any] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not values.strip():
            raise common.CLIError(f"{flag} {item!r}: expected NAME=VALUE[,VALUE...]")
        if name not in Params.names() or name == "verbose":
            raise common.CLIError(f"{flag} {item!r}: unknown hyperparameter {name!r}")
        if name in out:
            raise common.CLIError(f"{flag}: {name!r} given twice")
        if ranges and ":" in values:
            low, _, high = values.partition(":")
            lo, hi = parse_value(low), parse_value(high)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo >= hi:
                raise common.CLIError(f"{flag} {item!r}: a range needs two numbers LOW:HIGH with LOW < HIGH")
            out[name] = (lo, hi)
        else:
            parts = [v for v in values.split(",")]
            if any(not v.strip() for v in parts):
                raise common.CLIError(f"{flag} {item!r}: empty value in the list")
            out[name] = [parse_value(v) for v in parts]
    return out


def _check_candidates(args: argparse.Namespace, space: dict[str, Any]) -> None:
    """Build an estimator from each listed value so a bad one fails before any training."""
    for name, spec in space.items():
        values = spec if isinstance(spec, list) else list(spec)
        for v in values:
            try:
                common.estimator_from_args(args, **{name: v})
            except ValueError as exc:
                raise common.CLIError(f"bad value {v!r} for {name}: {exc}") from None


def _check_metric(metric: str | None, k: int) -> None:
    allowed = ["rmse", "mae"] + [f"{m}@{k}" for m in _RANKING]
    if metric is not None and metric not in allowed:
        raise common.CLIError(f"--metric {metric!r}: choose one of {', '.join(allowed)} (ranking metrics use -k={k})")


def tune(args: argparse.Namespace) -> int:
    from torchmf.evaluation import grid_search, optuna_search

    common.check_k(args.k)
    _check_metric(args.metric, args.k)
    if args.top <= 0:
        raise common.CLIError(f"--top must be a positive integer, got {args.top}")
    if args.patience <= 0:
        raise common.CLIError(f"--patience must be a positive integer, got {args.patience}")
    if args.optuna == (args.grid is not None):
        raise common.CLIError("give either --grid NAME=V1,V2 ... or --optuna (with --trials, --space)")
    if args.space is not None and not args.optuna:
        raise common.CLIError("--space goes with --optuna; for a grid use --grid")
    base = common.estimator_from_args(args)
    seed = base.get_params()["seed"]
    if args.optuna:
        if args.trials <= 0:
            raise common.CLIError(f"--trials must be a positive integer, got {args.trials}")
        space = parse_assignments(args.space, "--space", ranges=True) if args.space else dict(_DEFAULT_SPACE)
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise common.CLIError("--optuna needs optuna: pip install 'torchmf[tune]'") from None
    else:
        space = parse_assignments(args.grid, "--grid")
    _check_candidates(args, space)
    data = common.read_data(args.data, args)
    what = f"{args.trials} Optuna trials" if args.optuna else f"{_n_combos(space)} grid candidates"
    print(f"scoring {what} on {len(data):,} interactions from {args.data} (20% per user held out)", flush=True)
    shared = dict(metric=args.metric, k=args.k, patience=args.patience, seed=seed)
    if args.optuna:
        table = optuna_search(base, data, space, n_trials=args.trials, **shared)
    else:
        table = grid_search(base, data, space, **shared)
    metric = args.metric or _metric_column(table, space)
    best = _native({name: common.plain(table[name].iloc[0]) for name in space})
    common.emit(table.head(args.top), args.format)
    if args.format == "table":
        print(f"\nbest ({metric} = {table[metric].iloc[0]:.4f}): " + " ".join(f"--{n.replace('_', '-')} {v}"
                                                                          for n, v in best.items()))
    if args.output:
        model = common.estimator_from_args(args, **best).fit(data)
        model.save(args.output)
        print(f"best candidate refitted on all {len(data):,} interactions and saved to {args.output}")
    return 0


def _n_combos(grid: dict[str, list]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


def _metric_column(table: pd.DataFrame, space: dict[str, Any]) -> str:
    skip = set(space) | {"best_epoch", "fit_seconds"}
    return next(c for c in table.columns if c not in skip)


def _native(params: dict[str, Any]) -> dict[str, Any]:
    """Values from a DataFrame row back to the types the estimator validates (16, not 16.0)."""
    ints = {name for name, typ, _ in common._hp_specs() if typ is int}
    return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v for k, v in params.items()}
