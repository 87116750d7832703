"""Datasets: MovieLens from a local data home, and planted low-rank generators.

MovieLens may not be redistributed, so torchmf never ships it: it reads the
files from ``data_home`` (or ``$TORCHMF_DATA_HOME``, or ``~/.cache/torchmf``)
and, where a network exists, can download the official archive and verify its
checksum before use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions
from torchmf.data.readers import read_ratings
from torchmf.errors import DataError

__all__ = ["SyntheticTruth", "data_home", "load_movielens", "load_movielens_fold", "synthetic", "synthetic_counts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Source:
    folder: str
    ratings: str
    url: str
    # sha256 of the ratings file inside the archive, checked after download
    sha256: str | None


_MOVIELENS = {
    "100k": _Source("ml-100k", "u.data", "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                    "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
    "1m": _Source("ml-1m", "ratings.dat", "https://files.grouplens.org/datasets/movielens/ml-1m.zip", None),
    "latest-small": _Source("ml-latest-small", "ratings.csv",
                            "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip", None),
}


def data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Folder holding datasets: the argument, else ``$TORCHMF_DATA_HOME``, else ``~/.cache/torchmf``."""
    if data_home is not None:
        return Path(data_home).expanduser()
    env = os.environ.get("TORCHMF_DATA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "torchmf"


def _movielens_folder(variant: str, home: str | os.PathLike | None, download: bool) -> tuple[Path, _Source]:
    if variant not in _MOVIELENS:
        raise ValueError(f"variant must be one of {sorted(_MOVIELENS)}, got {variant!r}")
    src = _MOVIELENS[variant]
    folder = data_home(home) / src.folder
    if not (folder / src.ratings).exists():
        if not download:
            raise DataError(
                f"MovieLens {variant} not found: expected {folder / src.ratings}. Set $TORCHMF_DATA_HOME "
                f"(or data_home=) to the folder holding {src.folder}/, or pass download=True"
            )
        _download(src, data_home(home))
    return folder, src


def load_movielens(
    variant: str = "100k", data_home: str | os.PathLike | None = None, download: bool = False
) -> Interactions:
    """All ratings of a MovieLens dataset.

    Parameters
    ----------
    variant : {"100k", "1m", "latest-small"}
    data_home : path-like, optional
        Folder that holds ``ml-100k/``, ``ml-1m/`` or ``ml-latest-small/``.
    download : bool
        Fetch the official archive into ``data_home`` when the files are
        missing (needs a network; the ratings file's checksum is verified where
        torchmf knows it).

    Returns
    -------
    Interactions
        Explicit ratings with timestamps; ids as in the files (ints).
    """
    folder, src = _movielens_folder(variant, data_home, download)
    return read_ratings(folder / src.ratings)


def load_movielens_fold(
    fold: int | str, data_home: str | os.PathLike | None = None, download: bool = False
) -> tuple[Interactions, Interactions]:
    """One of ML-100k's canonical splits: ``fold`` in 1..5 (``u1``..``u5``), ``"a"`` or ``"b"``.

    Returns
    -------
    train, test : Interactions
        Read independently; ids are the raw MovieLens ints.
    """
    if str(fold) not in {"1", "2", "3", "4", "5", "a", "b"}:
        raise ValueError(f"fold must be 1..5, 'a' or 'b', got {fold!r}")
    folder, _ = _movielens_folder("100k", data_home, download)
    return read_ratings(folder / f"u{fold}.base"), read_ratings(folder / f"u{fold}.test")


def _download(src: _Source, home: Path) -> None:  # pragma: no cover - needs a network
    home.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", src.url)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        archive = Path(tmp) / "data.zip"
        with urllib.request.urlopen(src.url, timeout=60) as resp, open(archive, "wb") as out:
            shutil.copyfileobj(resp, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        extracted = Path(tmp) / src.folder
        digest = hashlib.sha256((extracted / src.ratings).read_bytes()).hexdigest()
        if src.sha256 is not None and digest != src.sha256:
            raise DataError(f"{src.url}: checksum mismatch for {src.ratings} (got {digest})")
        if src.sha256 is None:
            log.warning("no known checksum for %s; recorded sha256 %s", src.ratings, digest)
        os.replace(extracted, home / src.folder)


# ---------------------------------------------------------------------- synthetic
@dataclass(frozen=True)
class SyntheticTruth:
    """Ground truth of :func:`synthetic`.

    Attributes
    ----------
    user_factors : numpy.ndarray, shape (n_users, rank)
    item_factors : numpy.ndarray, shape (n_items, rank)
    global_mean : float
    user_bias : numpy.ndarray, shape (n_users,)
    item_bias : numpy.ndarray, shape (n_items,)
    noise : float
        Standard deviation of the rating noise: the best RMSE any model can reach.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    noise: float

    def expected(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Noise-free rating for index pairs, shape (n,)."""
        dot = np.einsum("nk,nk->n", self.user_factors[users], self.item_factors[items])
        return self.global_mean + self.user_bias[users] + self.item_bias[items] + dot


def synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_interactions: int = 50_000,
    rank: int = 8,
    noise: float = 0.1,
    popularity: float = 1.0,
    implicit: bool = False,
    seed: int | np.random.Generator = 0,
    id_prefix: bool = False,
) -> tuple[Interactions, SyntheticTruth]:
    """A planted low-rank dataset and its ground truth.

    ``rating = mean + b_u + b_i + p_u . q_i + noise`` with ``p, q ~ N(0, 1/sqrt(rank))``,
    observed on ``n_interactions`` distinct pairs. Item popularity follows a
    Zipf-like law with exponent ``popularity`` (0 = uniform), like real
    catalogues.

    Parameters
    ----------
    n_users, n_items, n_interactions : int
    rank : int
        True dimension of the factors.
    noise : float
        Standard deviation of Gaussian noise added to each rating.
    popularity : float
        Skew of item popularity; 0 gives uniform sampling.
    implicit : bool
        Return implicit data: each observed pair is one where the user's
        affinity ``p_u . q_i + b_i`` is among the highest of a sampled pool,
        with value 1.
    seed : int or numpy.random.Generator
    id_prefix : bool
        Use string ids ``"u0001"``/``"i0001"`` instead of ints.

    Returns
    -------
    data : Interactions
        Explicit (continuous ratings around 3) unless ``implicit``.
    truth : SyntheticTruth
    """
    for name, val in (("n_users", n_users), ("n_items", n_items), ("n_interactions", n_interactions), ("rank", rank)):
        if int(val) <= 0:
            raise ValueError(f"{name} must be positive, got {val}")
    if n_interactions > n_users * n_items:
        raise ValueError(f"n_interactions={n_interactions} exceeds n_users * n_items = {n_users * n_items}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(np.sqrt(rank))  # so that p.q has unit variance
    P = rng.normal(0.0, scale, (n_users, rank)).astype(np.float32)
    Q = rng.normal(0.0, scale, (n_items, rank)).astype(np.float32)
    bu = rng.normal(0.0, 0.3, n_users).astype(np.float32)
    bi = rng.normal(0.0, 0.3, n_items).astype(np.float32)
    truth = SyntheticTruth(P, Q, 3.0, bu, bi, float(noise))

    weights = 1.0 / np.arange(1, n_items + 1) ** popularity
    weights = weights[rng.permutation(n_items)]
    weights /= weights.sum()
    users, items = _sample_pairs(rng, n_users, n_items, n_interactions, weights, P, Q, bi, implicit)
    if implicit:
        values = np.ones(len(users), dtype=np.float32)
    else:
        values = (truth.expected(users, items) + rng.normal(0.0, noise, len(users))).astype(np.float32)
    user_ids = [f"u{i:05d}" for i in range(n_users)] if id_prefix else np.arange(n_users)
    item_ids = [f"i{i:05d}" for i in range(n_items)] if id_prefix else np.arange(n_items)
    ts = rng.integers(1_600_000_000, 1_700_000_000, len(users))
    data = Interactions(users, items, values, IdMap(user_ids, "user"), IdMap(item_ids, "item"), ts, implicit)
    return data, truth


def synthetic_counts(
    n_users: int = 2000,
    n_items: int = 3000,
    n_interactions: int = 100_000,
    rank: int = 8,
    median: float = 200.0,
    user_skew: float = 0.5,
    pair_sigma: float = 1.0,
    preference: float = 1.0,
    popularity: float = 1.0,
    seed: int | np.random.Generator = 0,
) -> tuple[Interactions, SyntheticTruth]:
    """Heavy-tailed play counts on a planted low-rank preference (like listening histories).

    Which items a user has is drawn as in ``synthetic(implicit=True)`` (items
    sampled by a Zipf-like popularity, the user keeps the ones with the
    highest planted affinity ``a = p_u . q_i + b_i``). Each kept pair's count is
    ``ceil(exp(log(median) + l_u + preference * a_std + pair_sigma * e))``
    with ``e ~ N(0, 1)``, ``a_std`` the affinity standardised over the kept
    pairs, and ``l_u = log(Z_u)`` a per-user activity level whose ``Z_u``
    follows a Zipf law of exponent ``1 + 1 / user_skew`` normalised to median 1
    (a few users play orders of magnitude more than the rest). With the
    defaults the median count is about ``median`` and the maximum several
    hundred thousand, like real play-count data.

    Parameters
    ----------
    n_users, n_items, n_interactions, rank : int
    median : float
        Median count of a typical user's typical pair.
    user_skew : float
        Heaviness of the per-user activity tail (0: all users alike).
    pair_sigma : float
        Log-scale noise of each count: larger means a heavier tail that says
        nothing about preference.
    preference : float
        How strongly the log count follows the planted affinity.
    popularity : float
        Skew of item popularity.
    seed : int or numpy.random.Generator

    Returns
    -------
    data : Interactions
        Implicit data (``implicit=True``), integer counts >= 1 as float32 values.
    truth : SyntheticTruth
        The planted factors (``noise`` is ``pair_sigma``).
    """
    if median < 1:
        raise ValueError(f"median must be >= 1, got {median}")
    for name, val in (("user_skew", user_skew), ("pair_sigma", pair_sigma), ("preference", preference)):
        if val < 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    pairs, truth = synthetic(n_users, n_items, n_interactions, rank, 0.0, popularity, implicit=True, seed=rng)
    affinity = truth.expected(pairs.users, pairs.items) - truth.global_mean - truth.user_bias[pairs.users]
    affinity = (affinity - affinity.mean()) / max(float(affinity.std()), 1e-12)
    if user_skew > 0:
        level = np.log(rng.zipf(1.0 + 1.0 / user_skew, n_users).astype(np.float64))
        level -= np.median(level)
    else:
        level = np.zeros(n_users)
    log_count = np.log(median) + level[pairs.users] + preference * affinity + rng.normal(0.0, pair_sigma, len(pairs))
    counts = np.ceil(np.exp(np.minimum(log_count, 20.0))).astype(np.float32)  # 20: e^20 ~ 5e8, float32-exact enough
    data = Interactions(pairs.users, pairs.items, counts, pairs.user_map, pairs.item_map, pairs.timestamps,
                        implicit=True)
    return data, SyntheticTruth(truth.user_factors, truth.item_factors, truth.global_mean, truth.user_bias,
                                truth.item_bias, float(pair_sigma))


def _sample_pairs(
    rng: np.random.Generator,
    n_users: int,
    n_items: int,
    n: int,
    weights: np.ndarray,
    P: np.ndarray,
    Q: np.ndarray,
    bi: np.ndarray,
    implicit: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` distinct (user, item) pairs, items drawn by popularity.

    Every user gets at least one pair. Candidates are oversampled, duplicates
    dropped, and each user keeps a quota of them: random ones for explicit
    data, the highest-affinity ones for implicit data (so that what a user
    interacts with is what the planted factors say they like).
    """
    quota = np.minimum(rng.multinomial(max(0, n - n_users), np.full(n_users, 1.0 / n_users)) + 1, n_items)
    over = 4.0 if implicit else 1.5
    draws = np.minimum(np.ceil(quota * over).astype(np.int64) + 4, n_items * 4)
    users = np.repeat(np.arange(n_users, dtype=np.int64), draws)
    items = np.searchsorted(np.cumsum(weights), rng.random(len(users)) * weights.sum()).clip(0, n_items - 1)
    key = users * n_items + items
    _, first = np.unique(key, return_index=True)
    users, items = users[first], items[first]
    if implicit:
        score = np.empty(len(users), dtype=np.float32)
        for start in range(0, len(users), 1 << 20):  # chunked: bounded memory
            sl = slice(start, start + (1 << 20))
            score[sl] = np.einsum("nk,nk->n", P[users[sl]], Q[items[sl]]) + bi[items[sl]]
        score = -score
    else:
        score = rng.random(len(users))
    order = np.lexsort((score, users))
    users, items = users[order], items[order]
    starts = np.searchsorted(users, np.arange(n_users))
    rank = np.arange(len(users)) - starts[users]
    keep = rank < quota[users]
    return users[keep], items[keep]
