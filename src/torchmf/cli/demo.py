"""``torchmf demo``: a two-minute tour on bundled, generated movie ratings."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from torchmf.cli import common

__all__ = ["add_parser"]

_DESCRIPTION = """\
Train a recommender on torchmf's bundled demo ratings (about 600 users rating
300 made-up movies whose titles name their genre), report validation metrics
and show recommendations. Runs offline in seconds.
"""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        parents=parents,
        help="train and query a model on bundled demo data",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--user", help="user id (1-600) to recommend for (default: the first with 20+ ratings)")
    p.add_argument("--write-csv", metavar="FILE", help="also write the demo ratings to a CSV file")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from torchmf.cli.train import holdout, validation_metrics
    from torchmf.data.demo import load_demo
    from torchmf.estimator.mf import MatrixFactorization

    start = time.perf_counter()
    data = load_demo()
    print("torchmf demo: movie ratings generated on the fly (no download, not real people)")
    print(_indent(data.describe()))
    if args.user is not None:
        user = common.resolve_id(data.user_map, args.user)
    if args.write_csv:
        frame = data.to_pandas().rename(columns={"value": "rating"})
        frame["rating"] = frame["rating"].astype(int)
        frame.to_csv(args.write_csv, index=False)
        print(f"  ratings written to {args.write_csv}")

    train, test = holdout(data, 0.2, seed=0)
    if args.user is None:
        counts = np.bincount(train.users, minlength=train.n_users)
        user = train.user_map.raw([int(np.flatnonzero(counts >= 20)[0])])[0]
    print(f"\nholding out 20% of each user's ratings: {len(train):,} to train on, {len(test):,} to test on")
    verbose = sys.stderr.isatty() if args.progress is None else args.progress
    model = MatrixFactorization(verbose=verbose)
    t0 = time.perf_counter()
    model.fit(train, validation=test)
    hp = model.effective_params
    print(
        f"trained the default MatrixFactorization() ({hp['solver'].upper()}, {hp['factors']} factors, "
        f"{len(model.history_)} sweeps) in {time.perf_counter() - t0:.1f} s"
    )

    metrics = validation_metrics(model, train, test, k=10)
    baseline = float(np.sqrt(np.mean((test.values - train.values.mean()) ** 2)))
    print("\nvalidation metrics on the held-out 20%:")
    print(_indent(common.metrics_table(metrics)))
    print(f"  (predicting everyone's average rating would give RMSE {baseline:.4f})")

    _show_user(model, train, user)
    title = _show_similar(model, train)

    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s. Where to go next:")
    print("  torchmf demo --write-csv ratings.csv        # the demo data as a CSV file to play with")
    print("  torchmf train ratings.csv -o model --validation 0.2 --plot curves.png")
    print(f"  torchmf recommend model --user {user} -k 5       # or --users FILE, --format json")
    print(f"  torchmf similar model --item '{title}'")
    print("  torchmf evaluate model test.csv   |   torchmf cv ratings.csv --folds 5")
    print("  torchmf tune ratings.csv --grid factors=16,64 reg=0.1,0.5")
    print("  torchmf COMMAND --help for every option; in Python: import torchmf; help(torchmf)")
    return 0


def _show_user(model: Any, train: Any, user: Any) -> None:
    u = train.user_map.index(user)
    mine = np.flatnonzero(train.users == u)
    order = mine[np.lexsort((np.arange(len(mine)), -train.values[mine]))][:5]
    print(f"\nuser {user} rated {len(mine)} movies in training; their favourites:")
    for row in order:
        print(f"  {'*' * int(train.values[row]):<5}  {train.item_map.raw([train.items[row]])[0]}")
    recs = model.recommend(user, k=5)
    print(f"top-5 recommendations for user {user} (predicted stars):")
    low, high = model.rating_range_  # ranking scores are not clipped; stars are
    for rank, (item, score) in enumerate(zip(recs["item"], recs["score"], strict=True), 1):
        print(f"  {rank}. {item:<34} {min(max(score, low), high):.2f}")


def _show_similar(model: Any, train: Any) -> str:
    counts = np.bincount(train.items, minlength=train.n_items)
    title = train.item_map.raw([int(np.argmax(counts))])[0]
    sims = model.similar_items(title, k=5)
    print(f"\nmovies most similar to {title!r}, the most-rated title (cosine of factors):")
    for item, score in zip(sims["item"], sims["score"], strict=True):
        print(f"  {score:+.2f}  {item}")
    return title


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
