"""Commands that use a saved model: predict, recommend, similar, info, evaluate."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pandas as pd

from torchmf.cli import common
from torchmf.cli.titles import add_title_options, attach_titles

__all__ = ["add_parsers"]

_RAW = argparse.RawDescriptionHelpFormatter


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_DIR", help="folder written by 'torchmf train'")


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "predict", parents=parents, formatter_class=_RAW,
        help="predict ratings for (user, item) pairs",
        description="Predict the rating of one (user, item) pair, or of every pair in a CSV file.",
        epilog="examples:\n  torchmf predict model --user 1 --item 50\n"
               "  torchmf predict model --pairs pairs.csv -o predictions.csv --unknown fallback",
    )
    _add_model(p)
    p.add_argument("--user", help="user id, as in the training file")
    p.add_argument("--item", help="item id, as in the training file")
    p.add_argument("--pairs", metavar="FILE", help="CSV of user,item pairs (a header line is optional; - for stdin)")
    p.add_argument("--sep", help="field separator of --pairs (sniffed by default)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the --pairs predictions here instead of stdout")
    p.add_argument(
        "--unknown", choices=("error", "fallback"), default="error",
        help="unknown user or item: stop with an error (default), or predict the mean plus the known bias",
    )
    p.set_defaults(func=predict)

    p = sub.add_parser(
        "recommend", parents=parents, formatter_class=_RAW,
        help="top-k items for a user or a list of users",
        description="Recommend the k best-scored items a user has not rated in training.",
        epilog="examples:\n  torchmf recommend model --user 1 -k 5\n"
               "  torchmf recommend model --users users.txt --format csv -o recs.csv\n"
               "  torchmf recommend model --interactions visitor.csv -k 5   # lines 'item[,value]'\n"
               "  torchmf recommend model --user 1 --items movies.csv --title-col title",
    )
    _add_model(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id, as in the training file")
    who.add_argument("--users", metavar="FILE", help="file of user ids, one per line (- for stdin)")
    who.add_argument("--interactions", metavar="FILE",
                     help="a visitor's items, one 'item[,value]' per line (- for stdin): recommendations for "
                          "someone the model has never seen, nothing stored")
    p.add_argument("--candidates", metavar="FILE", help="only rank these item ids, one per line (- for stdin)")
    p.add_argument("-k", type=int, default=10, help="number of items per user (default 10)")
    p.add_argument("--include-seen", action="store_true", help="also rank items the user rated in training")
    p.add_argument("--approximate", action="store_true",
                   help="use the model's approximate index ('torchmf index'); exact search when it has none")
    common.add_format(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write to this file instead of stdout")
    add_title_options(p)
    p.set_defaults(func=recommend)

    p = sub.add_parser(
        "similar", parents=parents, formatter_class=_RAW,
        help="items most similar to an item",
        description="Items whose factors are closest (cosine similarity) to the given item's.",
        epilog='example:\n  torchmf similar model --item 50 -k 5 --format json',
    )
    _add_model(p)
    p.add_argument("--item", required=True, help="item id, as in the training file")
    p.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    common.add_format(p)
    add_title_options(p)
    p.set_defaults(func=similar)

    p = sub.add_parser(
        "info", parents=parents, formatter_class=_RAW,
        help="describe a saved model",
        description="Show a saved model's hyperparameters, size, rating range and training history.",
    )
    _add_model(p)
    common.add_format(p, ("table", "json"))
    p.set_defaults(func=info)

    p = sub.add_parser(
        "evaluate", parents=parents, formatter_class=_RAW,
        help="accuracy and ranking metrics of a model on test data",
        description="Score a saved model on a test file: RMSE, MAE and top-k ranking metrics.\n"
                    "Items the model saw for a user in training are never recommended, so they\n"
                    "cannot count as hits; --train adds the interactions of another file to that.",
        epilog="example:\n  torchmf evaluate model test.csv -k 10 --format json",
    )
    _add_model(p)
    p.add_argument("test", metavar="TEST_DATA", help="ratings file to evaluate on")
    p.add_argument("--train", metavar="TRAIN_DATA", help="training file whose items are excluded from rankings")
    p.add_argument("-k", type=int, default=10, help="cut-off of the ranking metrics (default 10)")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="only test interactions with value >= X count as relevant (e.g. 4 stars); default all")
    common.add_format(p, ("table", "json"))
    common.add_reading_options(p)
    p.set_defaults(func=evaluate)


# ---------------------------------------------------------------------- commands
def predict(args: argparse.Namespace) -> int:
    single = args.user is not None or args.item is not None
    if single == (args.pairs is not None):
        raise common.CLIError("give either --user and --item, or --pairs FILE")
    if single and (args.user is None or args.item is None):
        raise common.CLIError("--user and --item go together")
    model = common.load_model(args.model)
    fallback = args.unknown == "fallback"
    if single:
        u = common.resolve_id(model.user_map, args.user, fallback)
        i = common.resolve_id(model.item_map, args.item, fallback)
        print(f"{model.predict(u, i, unknown=args.unknown):.4f}")
        return 0
    from torchmf.data.readers import read_table

    with common.stdin_as_file(args.pairs) as path:
        df = read_table(path, sep=common._sep(args.sep), columns=None)
    if df.shape[1] < 2:
        raise common.CLIError(f"{args.pairs}: expected two columns, user and item; found {df.shape[1]}")
    df = df.iloc[:, :2]
    df.columns = ["user", "item"]
    users = _resolve_many(model.user_map, df["user"], fallback)
    items = _resolve_many(model.item_map, df["item"], fallback)
    preds = model.predict(users, items, unknown=args.unknown)
    out = pd.DataFrame({"user": df["user"].str.strip(), "item": df["item"].str.strip(), "prediction": preds})
    common.emit(out, "csv", args.output)
    return 0


def recommend(args: argparse.Namespace) -> int:
    common.check_k(args.k)
    model = common.load_model(args.model)
    exclude, approx = not args.include_seen, args.approximate
    cand = None
    if args.candidates is not None:
        cand = [common.resolve_id(model.item_map, text) for text in common.read_ids(args.candidates)]
    if args.interactions is not None:
        recs = model.recommend_for(_visitor(model, args.interactions), k=args.k, exclude_seen=exclude, items=cand,
                                   approximate=approx)
        recs.insert(0, "rank", np.arange(1, len(recs) + 1))
    elif args.user is not None:
        recs = model.recommend(common.resolve_id(model.user_map, args.user), k=args.k, exclude_seen=exclude,
                               items=cand, approximate=approx)
        recs.insert(0, "rank", np.arange(1, len(recs) + 1))
        if args.format == "json":
            recs = recs[["item", "score"]]
    else:
        ids = [common.resolve_id(model.user_map, text) for text in common.read_ids(args.users)]
        recs = model.recommend(ids, k=args.k, exclude_seen=exclude, items=cand, approximate=approx)
    common.emit(attach_titles(recs, args), args.format, args.output)
    return 0


def similar(args: argparse.Namespace) -> int:
    common.check_k(args.k)
    model = common.load_model(args.model)
    out = model.similar_items(common.resolve_id(model.item_map, args.item), k=args.k)
    if args.format == "table":
        out.insert(0, "rank", np.arange(1, len(out) + 1))
    common.emit(attach_titles(out, args), args.format)
    return 0


def info(args: argparse.Namespace) -> int:
    model = common.load_model(args.model)
    hist = model.history_
    summary: dict[str, Any] = {
        "users": len(model.user_map),
        "items": len(model.item_map),
        "training interactions": len(model.seen_indices_),
        "feedback": "implicit" if model.implicit_ else "explicit",
        "epochs run": len(hist),
    }
    if not model.is_ranking:
        summary["rating range"] = [common.plain(float(x)) for x in model.rating_range_]
    if hist:
        summary["train loss (first, last)"] = [common.plain(hist[i]["train_loss"]) for i in (0, -1)]
    validation = model.extras_.get("validation")
    if validation:  # `train --validation`: the holdout's metrics, then a refit on all data
        summary["validation"] = f"{validation['fraction']:.0%} holdout, then refit for {validation['epochs']} epochs"
        summary.update({f"validation {k}": v for k, v in validation["metrics"].items()
                        if not k.startswith(("users_", "test_items"))})
    elif model.best_epoch_ is not None and hist:
        row = hist[model.best_epoch_ - 1]
        summary["best epoch"] = model.best_epoch_
        summary.update({f"validation {k[4:]}": common.plain(v) for k, v in row.items() if k.startswith("val_")})
    if model.index_ is not None:
        i = model.index_.info
        summary["approximate index"] = (f"{model.index_.kind} (m={i.get('m')}, ef_search={i.get('ef_search')}, "
                                        f"recall@10 {i.get('recall_at_10')})")
    params = {k: common.plain(v) for k, v in model.effective_params.items() if k != "verbose"}
    if args.format == "json":
        print(json.dumps({"model": summary, "hyperparameters": params, "history": hist}, indent=2))
        return 0
    print(f"torchmf model in {args.model}")
    print(common.metrics_table({k: _show(v) for k, v in summary.items()}))
    print("\nhyperparameters:")
    print("\n".join("  " + ln for ln in common.metrics_table(params).splitlines()))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from torchmf.evaluation import evaluate as _evaluate

    common.check_k(args.k)
    model = common.load_model(args.model)
    test = common.read_data(args.test, args)
    train = None if args.train is None else common.read_data(args.train, args)
    metrics = _evaluate(model, test, train=train, k=args.k, threshold=args.threshold)
    metrics = {k: common.plain(v) for k, v in dict(metrics).items()}
    if args.format == "json":
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{len(test):,} test interactions from {args.test}")
        print(common.metrics_table(metrics))
    return 0


# ---------------------------------------------------------------------- helpers
def _resolve_many(idmap: Any, texts: pd.Series, fallback: bool) -> np.ndarray:
    """Resolve each distinct text once; ``out[j]`` is the raw id for row j."""
    texts = texts.str.strip()
    uniq, inverse = np.unique(texts.to_numpy(dtype=str), return_inverse=True)
    resolved = np.empty(len(uniq), dtype=object)
    resolved[:] = [common.resolve_id(idmap, str(t), fallback) for t in uniq]
    return resolved[inverse]


def _show(v: Any) -> Any:
    if isinstance(v, list):
        return " .. ".join(str(x) for x in v) if len(v) == 2 else str(v)
    return v


def _visitor(model: Any, path: str) -> dict[Any, float]:
    """A visitor's 'item[,value]' lines as {item: value} (value 1 when absent), ids resolved like --user."""
    out: dict[Any, float] = {}
    for n, line in enumerate(common.read_ids(path), 1):
        parts = [p.strip() for p in line.replace("\t", ",").split(",")]
        if len(parts) > 2:
            raise common.CLIError(f"{path} line {n}: expected 'item' or 'item,value', got {line!r}")
        try:
            value = float(parts[1]) if len(parts) == 2 else 1.0
        except ValueError:
            raise common.CLIError(f"{path} line {n}: value {parts[1]!r} is not a number") from None
        out[common.resolve_id(model.item_map, parts[0])] = value
    return out
