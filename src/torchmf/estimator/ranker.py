"""The ranking component of a rating model: what ``recommend`` and ``similar_items`` of an explicit model use.

A model fitted to ratings by squared error predicts ratings well and ranks
badly: an item with one 5-star rating gets a large unshrunk bias and tops
every list (Cremonesi et al. 2010). With ``rank_by="interactions"`` (the
default of rating losses) the fit also trains an iALS model on the same
(user, item) pairs, every pair an interaction of value 1, with the iALS
defaults and the rating model's ``factors`` and seed. Lists then rank by

    score(u, i) = x_u . y_i + w * (b_i + p_u . q_i),     w = RATING_WEIGHT / sd(ratings)

the iALS score (which items this user is likely to pick) plus a small share
of the rating model's item part (how much they will like it; the user's own
constant ``mu + b_u`` does not change their order). Dividing by the
ratings' standard deviation makes ``w`` independent of the rating scale.
``similar_items`` uses the cosine of the iALS item factors: an item's
neighbours are items watched by the same people, not one-rating items with
arbitrary factors. ``predict`` and RMSE are untouched: they use the rating
model only.

``RATING_WEIGHT`` = 0.1 was chosen on a validation split carved out of
ML-100k ``u1.base`` (``benchmarks/ranking_defaults.py``: 0, 0.05, 0.1, 0.2,
0.4 by mean NDCG@10 over both relevance definitions), never on ``u*.test``.

The two parts are one dot product of concatenated vectors,
``[x_u, w p_u] . [y_i, q_i] + w b_i``, so every list still comes from one
:class:`~torchmf.retrieval.ExactIndex` search.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.data.profile import value_profile
from torchmf.errors import ModelFileError
from torchmf.estimator import params as hparams
from torchmf.estimator.state import ModelState
from torchmf.nn.mf import MFModel
from torchmf.retrieval import ExactIndex
from torchmf.solvers import get_solver

__all__ = [
    "RANKER", "RATING_WEIGHT", "fit_ranker", "fold_in_ranker", "ranker_from_state", "ranker_index", "ranker_queries",
    "ranker_tensors",
]

log = logging.getLogger(__name__)

# share of the rating model's (standardised) item score in an explicit model's ranking score
RATING_WEIGHT = 0.1
# prefix of the ranking component's tensors in a ModelState, and its key in ModelState.extras
RANKER = "ranker"


def fit_ranker(data: Interactions, hp: dict[str, Any], device: torch.device) -> tuple[MFModel, dict[str, Any]]:
    """Train the ranking component on ``data``'s pairs.

    Parameters
    ----------
    data : Interactions
        The compacted training ratings.
    hp : dict
        The rating model's effective hyperparameters (``factors``, ``cg_steps``,
        ``device``, ``seed`` are shared). Its epochs are not shown as progress
        (they would read as the rating model's); one INFO line reports the fit.
    device : torch.device

    Returns
    -------
    ranker : MFModel
        iALS factors, no biases, same rows as the rating model.
    meta : dict
        JSON-serialisable: ``hp`` (the iALS effective hyperparameters) and
        ``rating_weight`` (``w`` above).
    """
    from torchmf.training import fit_model  # training is only needed to fit

    ones = np.ones(len(data), dtype=np.float32)
    pairs = Interactions(data.users, data.items, ones, data.user_map, data.item_map, None, implicit=True)
    given = hparams.Params(loss="ials", factors=hp["factors"], cg_steps=hp["cg_steps"], device=hp["device"],
                           seed=hp["seed"], verbose=False)
    rank_hp = hparams.resolve(given, value_profile(ones))
    start = time.perf_counter()
    ranker, history, _ = fit_model(pairs, rank_hp, device)
    log.info("ranking component (rank_by='interactions'): iALS on the %d rated pairs, %d sweeps, train_loss=%.4g "
             "(%.1f s)", len(data), rank_hp["epochs"], history[-1]["train_loss"], time.perf_counter() - start)
    sd = float(np.std(data.values, dtype=np.float64))
    return ranker, {"hp": rank_hp, "rating_weight": RATING_WEIGHT / sd if sd > 0 else 0.0}


def ranker_index(model: MFModel, ranker: MFModel, weight: float) -> ExactIndex:
    """Items as ``[y_i, q_i]`` with bias ``w * b_i`` (see the module docstring)."""
    vectors = torch.cat([ranker.item_embs.weight, model.item_embs.weight], 1)
    bias = model.item_bias.weight[:, 0] * weight if model.biases else None
    return ExactIndex(vectors, bias)


def ranker_queries(rank_rows: torch.Tensor, rating_rows: torch.Tensor, weight: float) -> torch.Tensor:
    """Users as ``[x_u, w * p_u]``, shape (B, d_rank + d); ``rating_rows`` without the bias column."""
    return torch.cat([rank_rows, rating_rows * weight], 1)


def fold_in_ranker(ranker: MFModel, meta: dict[str, Any], items: np.ndarray, item_counts: np.ndarray) -> torch.Tensor:
    """A visitor's ranking row from their items (each an interaction of value 1), shape (d_rank,)."""
    hp = meta["hp"]
    dev = ranker.item_embs.weight.device
    it = torch.as_tensor(items, device=dev)
    with torch.no_grad():
        return get_solver(hp["loss"], hp["solver"]).fold_in(ranker, it, torch.ones(len(items), device=dev), hp,
                                                            item_counts)


def ranker_tensors(ranker: MFModel | None) -> dict[str, torch.Tensor]:
    """The ranking component's weights under ``"ranker."`` names, for a :class:`ModelState` (empty without one)."""
    return {} if ranker is None else {f"{RANKER}.{k}": v for k, v in ranker.state_dict().items()}


def ranker_from_state(state: ModelState) -> MFModel | None:
    """The ranking component stored in ``state`` (tensors shared), or None when it has none.

    Raises
    ------
    ModelFileError
        When the tensors are there but ``state.extras`` lacks the ``"ranker"`` entry.
    """
    prefix = RANKER + "."
    tensors = {k[len(prefix):]: v for k, v in state.tensors.items() if k.startswith(prefix)}
    if not tensors:
        return None
    if not isinstance(state.extras.get(RANKER), dict):
        raise ModelFileError(f"the model holds {RANKER} tensors but no {RANKER!r} entry in its extras")
    try:
        return dataclasses.replace(state, tensors=tensors).build_model()
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelFileError(f"the model's {RANKER} tensors are inconsistent: {exc}") from None
