"""A small, friendly, generated movie-ratings set for demos and tutorials.

:func:`load_demo` builds the same data on every call, offline, with no files:
about 600 users rate about 300 made-up movies with 1 to 5 stars. Each movie
belongs to one of eight genres, and its title says which (``"Galactic
Frontier (Sci-Fi)"``), so recommendations can be read at a glance: a user who
rates Sci-Fi highly should be offered more Sci-Fi.

How ratings are planted
-----------------------
Each user has a taste for every genre and a few hidden "style" preferences;
each movie has its genre, a style profile and a quality (item bias); each user
is harsher or kinder than average (user bias)::

    score = 2.9 + b_u + b_i + taste_u[genre_i] + style_u . style_i + noise
    stars = clip(round(score), 1, 5)

Users mostly watch what they expect to like and what is popular, as on real
sites: which movies a user rates is drawn with probability proportional to
``popularity_i * exp(taste_u[genre_i] + style_u . style_i)``. Nothing here is
MovieLens or any other licensed data.
"""

from __future__ import annotations

import numpy as np

from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions

__all__ = ["GENRES", "load_demo"]

# genre -> (first words, second words) of its titles
_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "Sci-Fi": (
        ["Galactic", "Quantum", "Stellar", "Orbital", "Neon", "Infinite", "Solar", "Android"],
        ["Frontier", "Signal", "Horizon", "Colony", "Drift", "Protocol", "Nebula", "Machine"],
    ),
    "Comedy": (
        ["Accidental", "Totally", "Wedding", "Office", "Lucky", "Awkward", "Big", "Weekend"],
        ["Roommates", "Disaster", "Holiday", "Detour", "Uncles", "Mix-Up", "Getaway", "Karaoke"],
    ),
    "Drama": (
        ["Quiet", "Broken", "Distant", "Winter", "Paper", "Silent", "Northern", "Open"],
        ["Letters", "River", "Promise", "Harvest", "Shore", "Years", "Window", "Field"],
    ),
    "Horror": (
        ["Hollow", "Crimson", "Midnight", "Whispering", "Rotten", "Pale", "Cursed", "Shadow"],
        ["House", "Woods", "Cellar", "Lake", "Doll", "Chapel", "Tapes", "Well"],
    ),
    "Romance": (
        ["Summer", "Paris", "Second", "Sweet", "Endless", "Stolen", "Secret", "Starlit"],
        ["Kiss", "Serenade", "Chance", "Affair", "Hearts", "Waltz", "Vows", "Sunset"],
    ),
    "Action": (
        ["Iron", "Rapid", "Deadly", "Steel", "Rogue", "Final", "Thunder", "Black"],
        ["Strike", "Pursuit", "Extraction", "Vendetta", "Siege", "Convoy", "Target", "Fury"],
    ),
    "Animation": (
        ["Little", "Magic", "Brave", "Tiny", "Flying", "Curious", "Happy", "Moonlight"],
        ["Dragon", "Robot", "Penguins", "Kingdom", "Balloon", "Fox", "Treehouse", "Lanterns"],
    ),
    "Documentary": (
        ["Inside", "Deep", "Wild", "Hidden", "Lost", "Frozen", "Ancient", "Forgotten"],
        ["Oceans", "Kitchens", "Cities", "Forests", "Empires", "Deserts", "Voices", "Rivers"],
    ),
}
GENRES: tuple[str, ...] = tuple(_WORDS)

_N_USERS = 600
_N_ITEMS = 300
_STYLE_DIMS = 4
_SEED = 0


def load_demo() -> Interactions:
    """The demo ratings: ~600 users x 300 titled movies, 1-5 stars, with timestamps.

    Deterministic (fixed seed) and generated in a few milliseconds; no file or
    network is touched.

    Returns
    -------
    Interactions
        Explicit ratings. User ids are the ints ``1 .. 600``; item ids are
        movie titles such as ``"Galactic Frontier (Sci-Fi)"`` whose last
        parenthesis names the genre. Timestamps are Unix seconds in 2019-2024.

    Examples
    --------
    >>> data = load_demo()
    >>> data.n_users, data.n_items
    (600, 300)
    >>> sorted(set(data.values.tolist()))
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    rng = np.random.default_rng(_SEED)
    n_genres = len(GENRES)
    genre = np.arange(_N_ITEMS) % n_genres
    rng.shuffle(genre)
    titles = _titles(genre, rng)

    # planted model: genre tastes + hidden styles + biases
    taste = rng.normal(0.0, 1.2, (_N_USERS, n_genres))
    style_u = rng.normal(0.0, 0.3, (_N_USERS, _STYLE_DIMS))
    style_i = rng.normal(0.0, 0.6, (_N_ITEMS, _STYLE_DIMS))
    b_u = rng.normal(0.0, 0.35, _N_USERS)
    b_i = rng.normal(0.0, 0.25, _N_ITEMS)
    affinity = taste[:, genre] + style_u @ style_i.T  # (users, items)

    # which movies each user rates: popular ones and ones they expect to like
    popularity = 1.0 / np.arange(1, _N_ITEMS + 1) ** 0.8
    popularity = popularity[rng.permutation(_N_ITEMS)]
    counts = np.clip(rng.lognormal(3.4, 0.55, _N_USERS).astype(np.int64), 12, 150)
    users_l, items_l = [], []
    for u in range(_N_USERS):
        w = popularity * np.exp(affinity[u])
        chosen = rng.choice(_N_ITEMS, size=counts[u], replace=False, p=w / w.sum())
        users_l.append(np.full(len(chosen), u, dtype=np.int64))
        items_l.append(np.sort(chosen))
    users = np.concatenate(users_l)
    items = np.concatenate(items_l)

    score = 2.9 + b_u[users] + b_i[items] + affinity[users, items] + rng.normal(0.0, 0.45, len(users))
    stars = np.clip(np.rint(score), 1, 5).astype(np.float32)

    start, end = 1_546_300_800, 1_735_603_200  # 2019-01-01 .. 2024-12-31
    ts = rng.integers(start, end, len(users))
    user_map = IdMap(np.arange(1, _N_USERS + 1), "user")
    item_map = IdMap(titles, "item")
    return Interactions(users, items, stars, user_map, item_map, ts, implicit=False)


def _titles(genre: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A distinct readable title per movie, ``"<Word> <Word> (<Genre>)"``."""
    out = [""] * len(genre)
    for g, name in enumerate(GENRES):
        first, second = _WORDS[name]
        combos = [f"{a} {b}" for a in first for b in second]
        members = np.flatnonzero(genre == g)
        picks = rng.choice(len(combos), size=len(members), replace=False)
        for m, p in zip(members, picks, strict=True):
            out[m] = f"{combos[p]} ({name})"
    return out
