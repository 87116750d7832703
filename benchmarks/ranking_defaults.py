"""Ranking quality of explicit-rating models: which default makes ``recommend`` good (issue 13 item 1).

The default explicit model (ALS on squared error) predicts ratings well but
its top-10 lists are ruled by items with one or two ratings: an unshrunk item
bias of a one-rating 5-star movie beats every popular film. This script
measures candidate ranking rules on ML-100k's canonical folds and on a
synthetic long-tail catalogue:

- ``mse``: the rating model's score ``mu + b_u + b_i + p_u . q_i`` (today);
- ``pop``: most popular unseen items (training counts);
- ``lcb z``: a support-aware lower confidence bound,
  ``score - z * sigma / sqrt(n_i)`` with ``sigma`` the training RMSE and
  ``n_i`` the item's training ratings;
- ``shrink m``: the item part shrunk by support, ``mu + b_u + (b_i + p_u . q_i) * n_i / (n_i + m)``;
- ``ials``: a ranking model trained on the same (user, item) pairs,
  ``MatrixFactorization(loss="ials")`` with its defaults, the rating as its
  confidence value (``ials-bin``: every pair value 1);
- ``hybrid w``: ``ials`` score plus ``w`` times the rating model's centred score
  (relevance-by-rating information on top of the interaction ranking).

Choice protocol: every rule parameter (z, m, w) is chosen on a validation split
carved out of ``u1.base`` (``random_split(u1.base, 0.2, seed=0)``), by NDCG@10
with every validation rating relevant; the chosen rules are then scored once
on u1..u5 test with both relevance definitions (every test rating; ratings >= 4).
Ranking is full: every training item minus the user's training items.

Also reported: the share of recommended items with <= 2 training ratings,
and for ``similar_items`` of the 50 most rated items the share of one/two-rating
items among their 10 neighbours (cosine of the rating model's item factors
today; of the ranking model's item factors for the hybrid).

Usage::

    python benchmarks/ranking_defaults.py                  # validation choice + u1..u5 + synthetic
    python benchmarks/ranking_defaults.py --folds 1        # u1 only
    python benchmarks/ranking_defaults.py --library        # score the library's recommend() (after the fix)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import torchmf
from torchmf.data.interactions import Interactions
from torchmf.data.split import random_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from implicit_peers import Split

DATA_HOME = os.environ.get("TORCHMF_DATA_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
K = 10
Z_GRID = (1.0, 4.0, 16.0, 64.0)
M_GRID = (5.0, 25.0, 100.0, 400.0)
W_GRID = (0.0, 0.05, 0.1, 0.2, 0.4)


class Fitted:
    """The rating model and the ranking model of one training set, as dense score blocks."""

    def __init__(self, train: Interactions, seed: int = 0) -> None:
        self.rating = torchmf.MatrixFactorization(verbose=False, seed=seed, rank_by="scores").fit(train)
        self.ranking = torchmf.MatrixFactorization(loss="ials", verbose=False, seed=seed).fit(train)
        binary = Interactions(train.users, train.items, np.ones(len(train), np.float32), train.user_map,
                              train.item_map, None, implicit=True)
        self.ranking_bin = torchmf.MatrixFactorization(loss="ials", verbose=False, seed=seed).fit(binary)
        self.support = np.bincount(self.rating.seen_indices_, minlength=len(self.rating.item_map)).astype(np.float64)
        m = self.rating.model
        with torch.no_grad():
            self.mu = float(m.global_bias)
            self.bu = m.user_bias.weight[:, 0].double().numpy()
            self.bi = m.item_bias.weight[:, 0].double().numpy()
            self.P = m.user_embs.weight.double().numpy()
            self.Q = m.item_embs.weight.double().numpy()
            self.X = self.ranking.model.user_embs.weight.double().numpy()
            self.Y = self.ranking.model.item_embs.weight.double().numpy()
            self.Xb = self.ranking_bin.model.user_embs.weight.double().numpy()
            self.Yb = self.ranking_bin.model.item_embs.weight.double().numpy()
        c = train.compact()
        pred = self.mu + self.bu[c.users] + self.bi[c.items] + np.einsum("nk,nk->n", self.P[c.users], self.Q[c.items])
        self.sd = float(np.std(c.values))
        self.sigma = float(np.sqrt(np.mean((np.clip(pred, *c.rating_range()) - c.values) ** 2)))

    # each rule: users -> (len(users), n_items) scores
    def mse(self, users: np.ndarray) -> np.ndarray:
        return self.mu + self.bu[users, None] + self.bi[None] + self.P[users] @ self.Q.T

    def pop(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.support, (len(users), len(self.support)))

    def lcb(self, z: float) -> Callable[[np.ndarray], np.ndarray]:
        pen = z * self.sigma / np.sqrt(np.maximum(self.support, 1.0))
        return lambda users: self.mse(users) - pen[None]

    def shrink(self, m: float) -> Callable[[np.ndarray], np.ndarray]:
        f = self.support / (self.support + m)
        return lambda users: self.mu + self.bu[users, None] + (self.bi[None] + self.P[users] @ self.Q.T) * f[None]

    def ials(self, users: np.ndarray) -> np.ndarray:
        return self.X[users] @ self.Y.T

    def ials_bin(self, users: np.ndarray) -> np.ndarray:
        return self.Xb[users] @ self.Yb.T

    def hybrid(self, w: float) -> Callable[[np.ndarray], np.ndarray]:
        # the rating model's per-user constant (mu + b_u) does not change a user's order, so this is
        # x_u . y_i + (w / sd) * (b_i + p_u . q_i): one dot product of concatenated factors plus an item
        # bias; sd (the training ratings' standard deviation) makes w independent of the rating scale
        def score(users: np.ndarray) -> np.ndarray:
            return self.ials_bin(users) + (w / self.sd) * (self.bi[None] + self.P[users] @ self.Q.T)
        return score

    def rules(self, z: float, m: float, w: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        return {"mse": self.mse, "pop": self.pop, f"lcb z={z:g}": self.lcb(z), f"shrink m={m:g}": self.shrink(m),
                "ials": self.ials, "ials-bin": self.ials_bin, f"hybrid w={w:g}": self.hybrid(w)}


def rare_share(top: np.ndarray, support: np.ndarray, limit: int = 2) -> float:
    """Share of recommended items (not padding) with at most ``limit`` training ratings."""
    valid = top >= 0
    return float((support[top[valid]] <= limit).mean())


def similar_rare_share(item_vectors: np.ndarray, support: np.ndarray, n_queries: int = 50) -> float:
    """Share of <= 2-rating items among the 10 cosine neighbours of the most rated items."""
    v = item_vectors / np.maximum(np.linalg.norm(item_vectors, axis=1, keepdims=True), 1e-12)
    queries = np.argsort(-support, kind="stable")[:n_queries]
    sims = v[queries] @ v.T
    sims[np.arange(len(queries)), queries] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    return float((support[top] <= 2).mean())


def evaluate_rules(f: Fitted, train: Interactions, test: Interactions,
                   rules: dict[str, Callable[[np.ndarray], np.ndarray]], threshold: float | None
                   ) -> dict[str, tuple[float, float]]:
    """NDCG@10 and the <=2-rating share of each rule's top-10 lists."""
    if threshold is not None:
        test = test.subset(test.values >= threshold)
    s = Split(train, test)
    assert s.item_map == f.rating.item_map
    out = {}
    for name, rule in rules.items():
        top = s.top_k(rule)
        out[name] = (s.metrics(top)["ndcg"], rare_share(top, f.support))
    return out


def library_scores(train: Interactions, test: Interactions, threshold: float | None) -> tuple[float, float]:
    """NDCG@10 of ``MatrixFactorization()``'s own ``recommend`` ranking (``torchmf.evaluate``) and its RMSE."""
    model = torchmf.MatrixFactorization(verbose=False).fit(train)
    res = torchmf.evaluate(model, test, k=K, threshold=threshold)
    return res["ndcg@10"], res["rmse"]


def choose(train: Interactions) -> tuple[float, float, float, list[str]]:
    """Rule parameters chosen on a validation split of ``train`` (never on its test)."""
    fit_, valid = random_split(train, 0.2, seed=0)
    f = Fitted(fit_)
    lines = []
    best = {}
    for key, grid, make in (("z", Z_GRID, f.lcb), ("m", M_GRID, f.shrink), ("w", W_GRID, f.hybrid)):
        rules = {f"{key}={v:g}": make(v) for v in grid}
        # both relevance definitions count equally
        res_all = evaluate_rules(f, fit_, valid, rules, None)
        res_pos = evaluate_rules(f, fit_, valid, rules, 4.0)
        mean = {n: (res_all[n][0] + res_pos[n][0]) / 2 for n in rules}
        best[key] = max(grid, key=lambda v, key=key: mean[f"{key}={v:g}"])
        lines.append(f"validation ({key}; NDCG all / >=4): "
                     + ", ".join(f"{n} {res_all[n][0]:.4f}/{res_pos[n][0]:.4f}" for n in rules)
                     + f" -> {key}={best[key]:g}")
        print(lines[-1], flush=True)
    return best["z"], best["m"], best["w"], lines


def long_tail(seed: int = 0) -> Interactions:
    """Synthetic explicit catalogue where half the items have <= 2 ratings (strong Zipf popularity)."""
    data, _ = torchmf.datasets.synthetic(n_users=1500, n_items=4000, n_interactions=60_000, rank=8, noise=0.5,
                                         popularity=1.2, seed=seed)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", default="1,2,3,4,5")
    ap.add_argument("--library", action="store_true", help="also score MatrixFactorization()'s own recommend")
    ap.add_argument("--no-synthetic", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    print(machine(), "(shared machine)", flush=True)
    u1_train, _ = torchmf.datasets.load_movielens_fold(1, data_home=DATA_HOME)
    z, m, w, _ = choose(u1_train)
    table = ["| data | relevance | " + " | ".join(["mse", "pop", f"lcb z={z:g}", f"shrink m={m:g}", "ials",
                                                  "ials-bin", f"hybrid w={w:g}"]) + " |"]
    table.append("|---" * 9 + "|")
    rare_rows = []
    sets: list[tuple[str, Interactions, Interactions]] = []
    for fold in args.folds.split(","):
        tr, te = torchmf.datasets.load_movielens_fold(int(fold), data_home=DATA_HOME)
        sets.append((f"u{fold}", tr, te))
    if not args.no_synthetic:
        tail = long_tail()
        n = np.bincount(tail.items, minlength=tail.n_items)
        print(f"synthetic long tail: {len(tail)} ratings, {int((n > 0).sum())} items, "
              f"{np.mean(n[n > 0] <= 2):.0%} of rated items with <= 2 ratings", flush=True)
        tr, te = random_split(tail, 0.2, seed=1)
        sets.append(("long-tail", tr, te))
    for name, tr, te in sets:
        f = Fitted(tr)
        rules = f.rules(z, m, w)
        for thr in (None, 4.0 if name.startswith("u") else 3.5):
            res = evaluate_rules(f, tr, te, rules, thr)
            rel = "all" if thr is None else f">= {thr:g}"
            table.append(f"| {name} | {rel} | " + " | ".join(f"{r[0]:.4f}" for r in res.values()) + " |")
            print(table[-1], flush=True)
            if thr is None:
                rare_rows.append(f"| {name} | " + " | ".join(f"{r[1]:.0%}" for r in res.values())
                                 + f" | {similar_rare_share(f.Q, f.support):.0%} | "
                                 f"{similar_rare_share(f.Y, f.support):.0%} |")
            if args.library:
                nd, rm = library_scores(tr, te, thr)
                print(f"  library recommend: NDCG@10 {nd:.4f}, RMSE {rm:.4f}", flush=True)
    print("\n".join(table))
    print("\nshare of top-10 items with <= 2 training ratings (same rule order), then similar_items "
          "(rating factors | ranking factors)")
    print("\n".join(rare_rows))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
