"""Model lifecycle behind the facade: incremental updates (``partial_fit``), warm starts, checkpoint settings.

:meth:`MatrixFactorization.partial_fit` and the ``warm_start`` / ``checkpoint_*``
arguments of :meth:`MatrixFactorization.fit` are thin wrappers over these functions.

Incremental updates
-------------------
``partial_fit(new)`` appends new users and items to the id maps and grows the
tables (new rows drawn like a fresh fit's, from a generator seeded with the
model's ``seed``; new biases zero), merges ``new`` into the seen index (a pair
already there takes the new value: the last value wins) and then re-solves only
the *touched* rows, those of users and items that occur in ``new``, with the
other rows as the warm start:

* ALS (``mse``) and iALS: first the new rows alone (new users, new items,
  and for iALS new users again: cheap, and it gives them sensible factors
  before their known neighbours are re-solved against them), then ``epochs``
  alternations (default 1) of touched users then touched items, each row on
  *all* its merged interactions, with the training solve (``cg_steps``
  warm-started CG steps, one fewer for ALS and two fewer, at least one, for
  iALS in the alternations; exact with ``cg_steps=0``) and the training
  penalty (``reg * n ** reg_exponent``; iALS's unobserved term over every
  item). Untouched rows keep their factors. The data work is linear and
  sorts nothing of the seen index's size (:mod:`torchmf.estimator.touched`).
* SGD losses (``mse`` with ``solver="sgd"``, ``bpr``, ``logistic``, ``warp``):
  for ``mse`` the new rows first get the same ridge solves (SGD's per-rating
  L2 is ALS's weighted lambda), then ``epochs`` passes (default 2) of the
  solver run over the new interactions plus four times as many old ones
  (a uniform sample, seeded), so the rows the new data touches do not drift
  away from what the old data taught them (more passes over the small set
  overfit it: ``benchmarks/partial_fit.py``). The optimiser starts afresh.

An explicit model's ranking component (:mod:`torchmf.estimator.ranker`, an
iALS model) is updated like an iALS model on the same row selections, its
new rows solved items first, then users.

The global bias stays at the value it was fitted with, and the approximate
index (``index_``) is dropped: it indexes the old item factors.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from torchmf.data.convert import as_interactions
from torchmf.data.csr import csr_order
from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions
from torchmf.errors import DataError, UnknownIdError
from torchmf.estimator.touched import Merged, SeenSides, merge_seen
from torchmf.nn.mf import MFModel
from torchmf.solvers import get_solver
from torchmf.solvers.als import als_half_sweep
from torchmf.solvers.als_solver import ALSSolver, als_layout
from torchmf.solvers.ials import IALSSettings, confidence, ials_half_sweep, ials_side_csr
from torchmf.solvers.ials_solver import IALSSolver
from torchmf.solvers.pairwise_solver import PairwiseSolver
from torchmf.solvers.sgd import model_tables
from torchmf.solvers.sgd_solver import SGDSolver

if TYPE_CHECKING:  # pragma: no cover
    from torchmf.estimator.mf import MatrixFactorization
    from torchmf.training import Validation
    from torchmf.training.checkpoint import Checkpointer

__all__ = ["checkpointer", "extend_map", "partial_fit", "seen_csr", "validation_for", "warm_start"]

log = logging.getLogger(__name__)

_UPDATABLE = (ALSSolver, IALSSolver, SGDSolver, PairwiseSolver)  # the solvers partial_fit knows how to update

ALS_ALTERNATIONS = 1  # default ``epochs`` of partial_fit for ALS and iALS
SGD_PASSES = 2  # default ``epochs`` of partial_fit for the SGD solvers
OLD_SAMPLE_RATIO = 4.0  # old interactions replayed per new one by SGD updates
# CG steps fewer than the training's in the alternations over touched rows (benchmarks/partial_fit.py)
ALS_FEWER_CG_STEPS = 1
IALS_FEWER_CG_STEPS = 2


def seen_csr(users: np.ndarray, items: np.ndarray, values: np.ndarray, n_users: int, n_items: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seen index: ``(indptr (n_users + 1,), items (n,), values (n,) float32)``, CSR sorted within rows."""
    indptr, order = csr_order(users, items, n_users, n_items)
    return indptr, np.asarray(items, dtype=np.int64)[order], np.asarray(values, dtype=np.float32)[order]


def validation_for(data: Interactions, validation: Interactions | None, device: torch.device) -> Validation | None:
    """``validation`` as index pairs of the compacted training ``data`` (pairs unknown to it left out)."""
    from torchmf.training import Validation

    if validation is None:
        return None
    return Validation(
        data.user_map.indices(validation.user_map.raw(validation.users), missing="ignore"),
        data.item_map.indices(validation.item_map.raw(validation.items), missing="ignore"),
        validation.values, data.rating_range(), device,
    )


def checkpointer(folder: str | os.PathLike | None, every: int | None, resume: bool, hp: dict[str, Any],
                 data: Interactions) -> Checkpointer | None:
    """The fit's :class:`~torchmf.training.checkpoint.Checkpointer`, or None without ``checkpoint_dir``.

    ``checkpoint_every`` defaults to 1; giving it, or ``resume``, without a folder is a ValueError.
    """
    from torchmf.training.checkpoint import Checkpointer

    if folder is None:
        if every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint_dir (the folder checkpoints go to)")
        return None
    return Checkpointer(folder, 1 if every is None else every, resume, hp, data)


def extend_map(known: IdMap, raw: np.ndarray) -> tuple[IdMap, np.ndarray]:
    """``known`` with the ids of ``raw`` it lacks appended, and the index of each of ``raw``.

    An id given as a string where the map holds the integer (or the reverse)
    is matched to the known id (:meth:`IdMap.resolve`), as the CLI does. One
    vectorised look-up; only the ids it misses are resolved one by one, and
    not at all when both sides hold integers (then the map keeps its integer dtype).
    """
    raw = np.asarray(raw)
    codes = known.indices(raw, missing="ignore")
    missing = codes < 0
    if not missing.any():
        return known, codes
    if raw.dtype.kind in "iu" and known.raw([]).dtype.kind in "iu":
        new_ids = pd.unique(raw[missing])  # in order of first appearance
        grown = IdMap(np.concatenate([known.raw(np.arange(len(known))), new_ids]), known.kind)
        if len(new_ids) == missing.sum():
            codes[missing] = np.arange(len(known), len(grown))
            return grown, codes
        return grown, grown.indices(raw)
    raw = raw.astype(object)
    for pos in np.flatnonzero(missing).tolist():
        try:
            raw[pos] = known.resolve(raw[pos])
        except UnknownIdError:
            pass
    grown = known.extend(raw[missing])
    return grown, grown.indices(raw)


def _remap(data: Interactions, user_map: IdMap, item_map: IdMap) -> tuple[IdMap, IdMap, np.ndarray, np.ndarray]:
    """``data``'s pairs as indices of ``user_map`` / ``item_map`` extended with its new ids.

    New ids are appended in ``data``'s map order, those without a pair in ``data`` left out.
    """
    out: list[Any] = []
    for idx, own, known in ((data.users, data.user_map, user_map), (data.items, data.item_map, item_map)):
        used = np.flatnonzero(np.bincount(idx, minlength=len(own)))
        grown, codes = extend_map(known, own.raw(used))
        lookup = np.full(len(own), -1, dtype=np.int64)
        lookup[used] = codes
        out += [grown, lookup[idx]]
    return out[0], out[2], out[1], out[3]


def warm_start(est: MatrixFactorization, train: Interactions, hp: dict[str, Any]) -> tuple[Interactions, MFModel]:
    """Data and starting model for ``fit(train, warm_start=True)``.

    The model's ids keep their rows; ``train`` must contain every one of them
    (it may add new users and items, which get fresh rows). The factors are a
    copy of the current ones; with biases the global bias is reset to the mean
    of ``train``.

    Raises
    ------
    NotFittedError
        Before a first fit.
    DataError
        When ``train`` lacks a user or item the model knows (name the first).
    ValueError
        When ``factors`` or ``biases`` differ from the fitted model's.
    """
    model = est.model
    if hp["factors"] != model.embedding_dim or bool(hp["biases"]) != model.biases:
        raise ValueError(f"warm_start needs the fitted model's factors={model.embedding_dim} and "
                         f"biases={model.biases}; got factors={hp['factors']}, biases={hp['biases']}")
    user_map, item_map, users, items = _remap(train, est.user_map, est.item_map)
    for kind, idx, known, grown in (("user", users, est.user_map, user_map), ("item", items, est.item_map, item_map)):
        absent = np.flatnonzero(np.bincount(idx, minlength=len(grown))[: len(known)] == 0)
        if len(absent):
            raise DataError(f"warm_start: the training data lacks {kind} {known.ids[absent[0]]!r} "
                            f"({len(absent)} {kind}s of the fitted model in all); the data must contain every id "
                            "the model knows (use partial_fit to add interactions to a model instead)")
    values = train.values  # compact() keeps the rows and their order
    data = Interactions(users, items, values, user_map, item_map, implicit=train.implicit)
    model = copy.deepcopy(model).cpu()
    model.grow(len(user_map), len(item_map), hp["init_std"], torch.Generator().manual_seed(hp["seed"]))
    if model.biases:
        model.global_bias.data.fill_(float(np.mean(values, dtype=np.float64)))
    return data, model


def partial_fit(est: MatrixFactorization, new_interactions: Any, epochs: int | None = None) -> None:
    """Add ``new_interactions`` to the fitted ``est`` in place (see the module docstring).

    The update works on a copy of the weights and installs it at the end, so
    an error leaves ``est`` as it was.
    """
    model = _copy_model(est.model)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    new = as_interactions(new_interactions, "new_interactions")
    if len(new) == 0:
        raise DataError("partial_fit: no new interactions")
    if new.implicit != est.implicit_:
        have, got = ("implicit", "explicit") if est.implicit_ else ("explicit", "implicit")
        raise DataError(f"partial_fit: the model was trained on {have} data, the new interactions are {got}")
    hp = est._hp
    if get_solver(hp["loss"], hp["solver"]) not in _UPDATABLE:
        raise ValueError(f"partial_fit supports the ALS, iALS and SGD solvers, not solver={hp['solver']!r} "
                         f"for loss={hp['loss']!r}; refit on all the data instead")
    lo, hi = new.rating_range()
    user_map, item_map, nu, ni = _remap(new, est.user_map, est.item_map)
    n_users, n_items = len(user_map), len(item_map)
    # the seen index after the update (a pair already there takes the new value), still CSR-sorted
    merged = merge_seen(est.seen_indptr_, est.seen_indices_, est.seen_values_, nu, ni, new.values, n_users, n_items)
    sides = SeenSides(merged)

    gen = torch.Generator().manual_seed(hp["seed"])
    model.grow(n_users, n_items, hp["init_std"], gen)
    touched_u, touched_i = _touched(nu, n_users), _touched(ni, n_items)
    new_users, new_items = np.arange(len(est.user_map), n_users), np.arange(len(est.item_map), n_items)
    rows = (touched_u, touched_i, new_users, new_items)
    als = hp["solver"] == "als"
    epochs = (ALS_ALTERNATIONS if als else SGD_PASSES) if epochs is None else epochs
    # ridge starts for the new rows of an SGD mse model: SGD's per-rating L2 is ALS's weighted lambda
    steps = _resolve_rows(model, sides, merged.values, hp, *rows, epochs if als else 0) if (
        als or hp["loss"] == "mse") else []
    ranker = None
    if getattr(est, "_ranker", None) is not None:  # the interaction component must rank the new ids too
        ranker, ranker_steps = _update_ranker(est, sides, rows)
        steps += ranker_steps
    with torch.no_grad():
        for step in steps:
            step()
        if not als:
            _sgd_passes(model, merged, user_map, item_map, est.implicit_, hp=hp, epochs=epochs, gen=gen)
    n_new_u, n_new_i = n_users - len(est.user_map), n_items - len(est.item_map)
    if ranker is not None:
        est._ranker = ranker
    est._model, est.user_map, est.item_map = model, user_map, item_map
    est.seen_indptr_, est.seen_indices_, est.seen_values_ = merged.indptr, merged.items, merged.values
    est.rating_range_ = (min(est.rating_range_[0], lo), max(est.rating_range_[1], hi))
    est.index_ = None  # it indexes the old item factors
    est.extras_.setdefault("updates", []).append({
        "interactions": len(new), "new_users": n_new_u, "new_items": n_new_i,
        "touched_users": len(touched_u), "touched_items": len(touched_i), "epochs": epochs,
    })
    log.info("partial_fit: %d interactions, %d new users, %d new items, %d touched users, %d touched items",
             len(new), n_new_u, n_new_i, len(touched_u), len(touched_i))


def _copy_model(model: MFModel) -> MFModel:
    """``model`` with copies of its weights (``copy.deepcopy`` of a module costs milliseconds)."""
    out = MFModel(0, 0, model.embedding_dim, biases=model.biases)
    for name, p in model.named_parameters():
        owner, _, attr = name.rpartition(".")
        setattr(out.get_submodule(owner) if owner else out, attr,
                torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
    for table in ("user_embs", "item_embs") + (("user_bias", "item_bias") if model.biases else ()):
        out.get_submodule(table).num_embeddings = out.get_submodule(table).weight.shape[0]
    return out


def _touched(idx: np.ndarray, n: int) -> np.ndarray:
    """The distinct indices in ``idx``, sorted (a bincount: linear, no sort)."""
    return np.flatnonzero(np.bincount(idx, minlength=n))


def _resolve_rows(model: MFModel, sides: SeenSides, values: np.ndarray, hp: dict[str, Any], touched_u: np.ndarray,
                  touched_i: np.ndarray, new_u: np.ndarray, new_i: np.ndarray, alternations: int,
                  items_first: bool = False) -> list[Callable[[], None]]:
    """Closed-form re-solves of rows on all their merged entries, the other side fixed, as steps to run in order.

    Every layout is built here, before any step runs: the data work is not interleaved with the solves
    (nor, when the caller builds the ranking component's steps too, with theirs).

    First the new rows alone (users, items, and users again except for
    explicit ALS: cheap, and it gives them sensible factors before their
    known neighbours are re-solved against them; with ``items_first``, items
    then users), then ``alternations`` of
    touched users then touched items. Each solve is the training one
    (``cg_steps`` warm-started CG steps, fewer for the touched rows, which
    start near their optimum: ``ALS_FEWER_CG_STEPS`` / ``IALS_FEWER_CG_STEPS``;
    exact with ``cg_steps=0``) with the training penalty. ``values`` are the
    merged index's values (ratings, or the strengths an iALS model turns into
    confidences). The row selections come from ``sides``, shared between calls.
    """
    dev = model.user_embs.weight.device
    t = model_tables(model)
    implicit = hp["loss"] == "ials"
    vals = confidence(values, hp["alpha"], hp["confidence"], hp["confidence_eps"]) if implicit else values
    mu = float(model.global_bias) if model.biases else 0.0
    n_of = {"user": sides.merged.n_users, "item": sides.merged.n_items}
    tables = {"user": (("P", "bu"), ("Q", "bi"), "item"), "item": (("Q", "bi"), ("P", "bu"), "user")}

    def solver_for(side: str, name: str, rows_to_solve: np.ndarray, steps: int = hp["cg_steps"]
                   ) -> Callable[[], None]:
        (f, b), (of, ob), other = tables[side]
        r, c, pos, indptr = sides.select(side, name, rows_to_solve)  # CSR-sorted: the layouts skip their sort
        settings_k = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], steps)
        idx = torch.as_tensor(rows_to_solve, device=dev)
        if implicit:
            layout: Any = ials_side_csr(indptr, c, vals[pos], len(rows_to_solve), n_of[other], hp["factors"], dev,
                                        settings_k)
        else:
            layout = als_layout(r, c, vals[pos], len(rows_to_solve), n_of[other], {**hp, "cg_steps": steps}, dev,
                                t["P"].dtype, indptr=indptr)

        def solve() -> None:
            rows_f = t[f][idx]
            rows_b = t[b][idx] if b in t else None
            if implicit:
                ials_half_sweep(layout, rows_f, t[of], settings_k)
            else:
                als_half_sweep(layout, rows_f, rows_b, t[of], t.get(ob), mu, hp["reg"], hp["reg_bias"],
                               cg_steps=steps, reg_exponent=hp["reg_exponent"])
            t[f][idx] = rows_f
            if rows_b is not None:
                t[b][idx] = rows_b

        return solve

    steps: list[Callable[[], None]] = []
    if len(new_u) and len(new_i):
        first_u, first_i = solver_for("user", "new", new_u), solver_for("item", "new", new_i)
        # the new users once more against the solved new items: iALS and the SGD starts need it (iALS
        # NDCG -0.0036 without it, -0.0028 with it); explicit ALS's touched users step re-solves them
        # right away (u1 RMSE +0.00204 without, +0.00206 with)
        if items_first:  # the new items against the known users first: one new-users solve fewer
            steps += [first_i, first_u]
        else:
            steps += [first_u, first_i] + ([first_u] if implicit or alternations < 1 else [])
    if alternations < 1:
        return steps
    # known rows start near their optimum: fewer CG steps than training (same accuracy on ML-100k)
    k = max(1, hp["cg_steps"] - (IALS_FEWER_CG_STEPS if implicit else ALS_FEWER_CG_STEPS)) if hp["cg_steps"] > 0 else 0
    users, items = solver_for("user", "touched", touched_u, k), solver_for("item", "touched", touched_i, k)
    return steps + [users, items] * alternations


def _sgd_passes(model: MFModel, merged: Merged, user_map: IdMap, item_map: IdMap, implicit: bool,
                hp: dict[str, Any], epochs: int, gen: torch.Generator) -> None:
    """``epochs`` passes of the SGD solver over the new pairs plus a seeded sample of old ones.

    The pairs go to the solver as the old ones picked (in seen-index order), then the new ones in the
    order they were given.
    """
    old_idx = np.flatnonzero(~merged.is_new)
    n_old = min(len(old_idx), round(OLD_SAMPLE_RATIO * len(merged.new_pos)))
    pick = torch.randperm(len(old_idx), generator=gen)[:n_old].numpy()
    rows = np.concatenate([np.sort(old_idx[pick]), merged.new_pos])
    sub = Interactions(merged.users[rows], merged.items[rows], merged.values[rows], user_map, item_map,
                       implicit=implicit)
    run = {**hp, "epochs": epochs}
    solver = get_solver(hp["loss"], hp["solver"])(model, sub, run, model.user_embs.weight.device)
    for _ in range(epochs):
        solver.epoch()
    solver.finish()


def _update_ranker(est: MatrixFactorization, sides: SeenSides, rows: tuple[np.ndarray, ...]
                   ) -> tuple[MFModel, list[Callable[[], None]]]:
    """The rating model's iALS ranking component, grown, and the steps that re-solve its touched rows.

    It trains on the pairs with every value 1 (:mod:`torchmf.estimator.ranker`), with its own effective
    hyperparameters, on the same row selections as the rating model's update; one alternation (ALS's
    default) whatever ``epochs`` the rating model's update used. Its new rows are solved items first,
    then users (two solves instead of an iALS model's three; NDCG@10 of recommend on u1.test over three
    hold-back seeds: the same on average, benchmarks/RESULTS.md section 12).
    """
    rhp = est.extras_["ranker"]["hp"]
    ranker = _copy_model(est._ranker)
    m = sides.merged
    ranker.grow(m.n_users, m.n_items, rhp["init_std"], torch.Generator().manual_seed(rhp["seed"]))
    return ranker, _resolve_rows(ranker, sides, np.ones(len(m), dtype=np.float32), rhp, *rows, ALS_ALTERNATIONS,
                                 items_first=True)
