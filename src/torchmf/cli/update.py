"""``torchmf update``: add new interactions to a saved model (``partial_fit``) and save the result."""

from __future__ import annotations

import argparse
import time
from typing import Any

from torchmf.cli import common

__all__ = ["add_parser"]

_DESCRIPTION = """\
Add the interactions in NEW_DATA to a saved model without retraining from
scratch: new users and items get rows, the rows of every user and item that
NEW_DATA touches are re-solved (closed form for ALS/iALS, a few SGD passes for
the SGD losses) and the rest of the model is kept. A pair the model has
already seen takes the new value. NEW_DATA is read like 'torchmf train' reads
its data (same options). An approximate index saved with the model is dropped
(it indexes the old factors); rebuild it with 'torchmf index'.
"""

_EXAMPLES = """\
examples:
  torchmf update model today.csv -o model-v2
  torchmf update model plays.tsv -o model --overwrite --implicit
  torchmf update model today.csv -o model-v2 --epochs 2
"""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "update", parents=parents, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="add new interactions to a saved model (incremental update) and save it",
        description=_DESCRIPTION, epilog=_EXAMPLES,
    )
    p.add_argument("model", metavar="MODEL_DIR", help="folder written by 'torchmf train'")
    p.add_argument("data", metavar="NEW_DATA", help="the new interactions (CSV, TSV, '::' or Parquet)")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="folder to save the updated model to")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it exists (e.g. DIR = MODEL_DIR)")
    p.add_argument("--epochs", type=common.positive_int, metavar="N",
                   help="ALS/iALS: alternations over the touched rows (default 1); SGD: passes (default 2)")
    common.add_reading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = common.load_model(args.model)
    data = common.read_data(args.data, args)
    n_users, n_items = len(model.user_map), len(model.item_map)
    start = time.perf_counter()
    model.partial_fit(data, epochs=args.epochs)
    took = time.perf_counter() - start
    model.save(args.output, overwrite=args.overwrite)
    print(f"added {len(data):,} interactions from {args.data}: {len(model.user_map) - n_users:,} new users, "
          f"{len(model.item_map) - n_items:,} new items, in {took:.1f} s")
    print(f"model saved to {args.output}")
    return 0
