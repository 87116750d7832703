"""``torchmf split`` (train/test files from one ratings file) and ``torchmf explain`` (why an item was recommended)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchmf.cli import common
from torchmf.cli.titles import add_title_options, attach_titles

__all__ = ["add_parsers"]

_RAW = argparse.RawDescriptionHelpFormatter


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "split", parents=parents, formatter_class=_RAW,
        help="split a ratings file into train and test files",
        description="Write DIR/train.csv and DIR/test.csv (user,item,value[,timestamp] with a header).\n"
                    "user: each user's interactions split (users with fewer than --min-interactions stay in train);\n"
                    "random: interactions split at random; temporal: the latest interactions are the test set.",
        epilog="example:\n  torchmf split ratings.csv --how user --test 0.2 -o splits/",
    )
    p.add_argument("data", metavar="DATA", help="ratings file")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="folder for train.csv and test.csv")
    p.add_argument("--how", choices=("user", "random", "temporal"), default="user", help="how to split (default user)")
    p.add_argument("--test", type=float, default=0.2, metavar="FRACTION", help="test fraction (default 0.2)")
    p.add_argument("--min-interactions", type=int, default=5, help="--how user: users with fewer stay in train")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    common.add_reading_options(p)
    p.set_defaults(func=split)

    p = sub.add_parser(
        "explain", parents=parents, formatter_class=_RAW,
        help="which of a user's own items led to a recommendation",
        description="The user's training items that contributed most to their score of ITEM (exact for ALS\n"
                    "models, Hu et al. 2008; item-item dot products for the others).",
        epilog="example:\n  torchmf explain model --user 1 --item 50 -k 5 --items movies.csv",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="folder written by 'torchmf train'")
    p.add_argument("--user", required=True, help="user id, as in the training file")
    p.add_argument("--item", required=True, help="item id, as in the training file")
    p.add_argument("-k", type=int, default=10, help="number of contributing items (default 10)")
    common.add_format(p)
    add_title_options(p)
    p.set_defaults(func=explain)


def split(args: argparse.Namespace) -> int:
    from torchmf.data.split import random_split, temporal_split, user_split
    from torchmf.errors import DataError

    if not 0.0 < args.test < 1.0:
        raise common.CLIError(f"--test must be a fraction between 0 and 1 (exclusive), got {args.test:g}")
    data = common.read_data(args.data, args)
    try:
        if args.how == "user":
            train, test = user_split(data, args.test, min_interactions=args.min_interactions, seed=args.seed)
        elif args.how == "random":
            train, test = random_split(data, args.test, seed=args.seed)
        else:
            train, test = temporal_split(data, args.test)
    except DataError as exc:
        raise common.CLIError(f"--how {args.how}: {exc}") from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise common.CLIError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):
        frame = part.to_pandas().rename(columns={"value": "rating"})
        if part.implicit:  # every value is 1: the readers treat a two-column file as implicit again
            frame = frame.drop(columns="rating")
        frame.to_csv(out / f"{name}.csv", index=False)
        print(f"{name}: {len(part):,} interactions, {part.n_users:,} users, {part.n_items:,} items -> {out / name}.csv")
    return 0


def explain(args: argparse.Namespace) -> int:
    common.check_k(args.k)
    model = common.load_model(args.model)
    user = common.resolve_id(model.user_map, args.user)
    item = common.resolve_id(model.item_map, args.item)
    out = model.explain(user, item, k=args.k)
    common.emit(attach_titles(out, args), args.format)
    return 0
