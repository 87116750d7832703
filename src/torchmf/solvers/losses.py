"""Losses as pure functions: scores in, (summed loss, gradient w.r.t. scores) out.

The SGD solver back-propagates by hand through the dot product (it is two
lines), so a loss only has to say how the loss moves with each score. Keeping
them pure makes each one testable against autograd in isolation.
"""

from __future__ import annotations

import torch
from torch.nn.functional import softplus

__all__ = ["PAIRWISE", "bpr", "logistic", "mse", "warp"]


def mse(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half squared error ``0.5 * sum((pred - target)^2)``.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (B,)

    Returns
    -------
    loss : torch.Tensor, shape ()
        Summed over the batch (Funk-SVD semantics: each rating is one step).
    grad : torch.Tensor, shape (B,)
        ``d loss / d pred = pred - target``.
    """
    err = pred - target
    return 0.5 * (err * err).sum(), err


def logistic(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary cross-entropy: positives labelled 1, sampled negatives 0.

    Parameters
    ----------
    pos : torch.Tensor, shape (B,)
        Scores of observed pairs.
    neg : torch.Tensor, shape (B,) or (B, N)
        Scores of sampled negatives.

    Returns
    -------
    loss : torch.Tensor, shape ()
    grad_pos : torch.Tensor, shape (B,)
    grad_neg : torch.Tensor, same shape as ``neg``
    """
    loss = softplus(-pos).sum() + softplus(neg).sum()
    return loss, -torch.sigmoid(-pos), torch.sigmoid(neg)


def bpr(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bayesian personalised ranking, ``-sum log sigmoid(pos - neg)`` (Rendle et al. 2009).

    With ``neg`` of shape (B, N) each positive is paired with N negatives.

    Returns
    -------
    loss : torch.Tensor, shape ()
    grad_pos : torch.Tensor, shape (B,)
    grad_neg : torch.Tensor, same shape as ``neg``
    """
    diff = pos.unsqueeze(1) - neg if neg.dim() == 2 else pos - neg
    loss = softplus(-diff).sum()
    g = -torch.sigmoid(-diff)  # d loss / d diff
    grad_pos = g.sum(1) if neg.dim() == 2 else g
    return loss, grad_pos, -g


def warp(
    pos: torch.Tensor, neg: torch.Tensor, n_items: int, margin: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """WARP-style loss over N sampled negatives per positive (Weston et al. 2011).

    Among the N negatives, those that violate the margin (``neg > pos - margin``)
    estimate the positive's rank as ``(n_items - 1) * violations / N``; the
    hinge of the violators is weighted by ``log(1 + rank)``, so that mistakes at
    the top of the list cost most. Sequential WARP (LightFM) takes the hinge of
    the first violator its sampling finds, i.e. of a uniformly random violator;
    averaging the hinge over all violators is that step's expectation, so it
    trains the same objective with less noise, and unlike "the hardest
    violator" it also pushes down the many moderately wrong items. The batched
    estimate replaces WARP's sequential sampling, which does not vectorise.

    Parameters
    ----------
    pos : torch.Tensor, shape (B,)
    neg : torch.Tensor, shape (B, N)
    n_items : int
    margin : float

    Returns
    -------
    loss : torch.Tensor, shape ()
    grad_pos : torch.Tensor, shape (B,)
    grad_neg : torch.Tensor, shape (B, N)
        Non-zero only at violating negatives.
    """
    n_neg = neg.shape[1]
    hinge = (margin - pos.unsqueeze(1) + neg).clamp_min(0)
    violating = hinge > 0
    count = violating.sum(1)
    rank = torch.floor((n_items - 1) * count.to(pos.dtype) / n_neg)
    # rank weight shared by the row's violators; the weight is piecewise
    # constant in the scores, so it carries no gradient of its own
    weight = torch.log1p(rank) / count.clamp_min(1).to(pos.dtype)
    loss = (weight.unsqueeze(1) * hinge).sum()
    grad_neg = weight.unsqueeze(1) * violating.to(pos.dtype)
    return loss, -grad_neg.sum(1), grad_neg


PAIRWISE = {"bpr": bpr, "logistic": logistic, "warp": warp}
