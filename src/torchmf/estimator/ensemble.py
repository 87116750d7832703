"""One model from several fitted on the same data: the mean of their scores, as one dot product.

For models j = 1..m with scores ``s_j(u, i) = g_j + b_j(u) + c_j(i) + p_j(u) . q_j(i)``, the mean score
is ``mean(g) + mean(b)(u) + mean(c)(i) + P(u) . Q(i)`` where ``P`` and ``Q`` are the members' factor
rows side by side, each scaled by ``1 / sqrt(m)``. So the average of m MF models *is* an MF model (of
``sum(d_j)`` factors): it predicts, recommends, saves, loads, serves and indexes like any other, with
no ensemble code anywhere downstream. :func:`torchmf.autotune` uses it to return the mean of its best
finalists for ranking losses, whose top settings validation cannot tell apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from torchmf.estimator.mf import MatrixFactorization
from torchmf.nn.mf import MFModel

__all__ = ["average_models"]


def average_models(models: Sequence[MatrixFactorization]) -> MatrixFactorization:
    """The fitted model whose every score is the mean of ``models``' scores.

    Parameters
    ----------
    models : sequence of fitted MatrixFactorization, m >= 1
        Fitted on the same data (the same user and item ids in the same order), with the same loss and
        ``biases``; none sampled by Gibbs (its factors are its kept draws, which ``predict(...,
        return_std=True)`` reads) or ranking by a separate interaction model (``rank_by="interactions"``).

    Returns
    -------
    MatrixFactorization
        A new estimator with ``factors = sum(d_j)``: its factors are the members' side by side, each
        scaled by ``1 / sqrt(m)`` (user and item factors of shapes (n_users, sum d_j), (n_items, sum
        d_j)), its biases the members' means. Its other hyperparameters, history, extras and seen items
        are the first member's: ``partial_fit`` and fold-in treat it as one model of that size with the
        first member's settings. One model comes back as a copy of itself.

    Raises
    ------
    ValueError
        For no models, an unfitted one, or members that do not fit together (named by position).
    """
    if not models:
        raise ValueError("average_models needs at least one fitted model")
    unfitted = [n for n, m in enumerate(models) if getattr(m, "_model", None) is None]
    if unfitted:
        raise ValueError(f"average_models: model {unfitted[0]} is not fitted")
    first = models[0]
    loss = first.effective_params["loss"]
    for n, m in enumerate(models):
        hp = m.effective_params
        if hp["solver"] == "gibbs" or m._ranker is not None:
            raise ValueError(f"average_models: model {n} ({hp['solver']}, rank_by={hp['rank_by']!r}) is not "
                             "one plain dot product: its factors cannot be averaged by concatenation")
        if hp["loss"] != loss or m._model.biases != first._model.biases:
            raise ValueError(f"average_models: model {n} has another loss or biases setting than model 0")
        if m.user_map != first.user_map or m.item_map != first.item_map:
            raise ValueError(f"average_models: model {n} was fitted on other user or item ids than model 0")
    scale = 1.0 / math.sqrt(len(models))
    nets = [m._model for m in models]
    with torch.no_grad():
        users = torch.cat([net.user_embs.weight * scale for net in nets], 1)
        items = torch.cat([net.item_embs.weight * scale for net in nets], 1)
        net = MFModel(users.shape[0], items.shape[0], users.shape[1], biases=first._model.biases)
        net = net.to(device=users.device, dtype=users.dtype)
        net.user_embs.weight.copy_(users)
        net.item_embs.weight.copy_(items)
        if net.biases:
            net.user_bias.weight.copy_(torch.stack([x.user_bias.weight for x in nets]).mean(0))
            net.item_bias.weight.copy_(torch.stack([x.item_bias.weight for x in nets]).mean(0))
            net.global_bias.copy_(torch.stack([x.global_bias for x in nets]).mean(0))
    total = int(users.shape[1])
    out = MatrixFactorization(**{**first.get_params(), "factors": total})
    out._install(net, {**first.effective_params, "factors": total}, first.user_map, first.item_map,
                 first.implicit_, first.rating_range_, list(first.history_), first.best_epoch_,
                 dict(first.extras_))
    out.seen_indptr_, out.seen_indices_, out.seen_values_ = first.seen_indptr_, first.seen_indices_, first.seen_values_
    return out
