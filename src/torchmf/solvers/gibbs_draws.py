"""The conditional draws of the Gibbs sampler, and the posterior spread of its predictions.

:func:`draw_rows` draws latent rows from their Gaussian conditionals (batched
Cholesky plus ``L^-T z``), :func:`normal_gamma` a group's mean and precision
from their Normal-Gamma posterior, and :func:`posterior_std` recovers each
sample's score from the concatenated layout the sampler's result is stored in.
"""

from __future__ import annotations

import torch

__all__ = ["A0", "B0", "G0", "draw_rows", "normal_gamma", "posterior_std"]

# hyperprior of every precision (Gamma(A0, B0)) and of every group mean (N(0, 1/(G0 lam))): myFM's defaults
A0, B0, G0 = 1.0, 1.0, 1.0


def normal_gamma(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint draw of ``(mu, lam)`` per column from the Normal-Gamma posterior given rows ``x``.

    Prior ``lam ~ Gamma(A0, B0)``, ``mu | lam ~ N(0, 1 / (G0 lam))`` per column.

    Parameters
    ----------
    x : torch.Tensor, shape (n, m)
    generator : torch.Generator

    Returns
    -------
    mu, lam : torch.Tensor, shape (m,)
    """
    n = x.shape[0]
    xbar = x.mean(0)
    ss = (x - xbar).square().sum(0)
    gn = G0 + n
    shape = torch.full_like(xbar, A0 + n / 2)
    rate = B0 + 0.5 * (ss + G0 * n * xbar.square() / gn)
    lam = torch._standard_gamma(shape, generator=generator) / rate
    z = torch.randn(xbar.shape, generator=generator, device=x.device, dtype=x.dtype)
    mu = n * xbar / gn + z / (gn * lam).sqrt()
    return mu, lam


def draw_rows(
    gram: torch.Tensor,
    h: torch.Tensor,
    prior: torch.Tensor,
    lam: torch.Tensor,
    alpha: torch.Tensor | float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One draw per row from ``N(P^-1 (alpha h + lam * prior), P^-1)``, ``P = alpha gram + diag(lam)``.

    The Gaussian conditional of a row's ``[factors, bias]`` in Bayesian MF
    (a ridge regression with a random draw added): one batched Cholesky
    ``P = L L^T``, the mean by two triangular solves, and ``L^-T z`` for
    standard normal ``z``.

    Parameters
    ----------
    gram : torch.Tensor, shape (B, m, m)
        ``sum_i f_i f_i^T`` over each row's observations.
    h : torch.Tensor, shape (B, m)
        ``sum_i t_i f_i``.
    prior : torch.Tensor, shape (B, m)
        Prior mean of each row.
    lam : torch.Tensor, shape (m,)
        Prior precision per dimension (positive).
    alpha : torch.Tensor or float
        Noise precision: a scalar, or one per row, shape (B,).
    generator : torch.Generator

    Returns
    -------
    torch.Tensor, shape (B, m)
    """
    alpha = torch.as_tensor(alpha, dtype=gram.dtype, device=gram.device)
    if alpha.dim():  # one precision per row
        alpha = alpha.reshape(-1, 1)
    prec = gram * alpha.unsqueeze(-1)
    prec.diagonal(dim1=1, dim2=2).add_(lam)
    rhs = (h * alpha + lam * prior).unsqueeze(2)
    chol, info = torch.linalg.cholesky_ex(prec)
    if bool((info != 0).any()):  # only in float32 with extreme scales: retry with jitter
        prec.diagonal(dim1=1, dim2=2).add_(1e-4 * prec.diagonal(dim1=1, dim2=2).mean(1, keepdim=True))
        chol = torch.linalg.cholesky(prec)
    draw = torch.cholesky_solve(rhs, chol)
    z = torch.randn(draw.shape, generator=generator, device=draw.device, dtype=draw.dtype)
    draw.add_(torch.linalg.solve_triangular(chol.transpose(1, 2), z, upper=True))
    return draw.squeeze(2)


def posterior_std(
    user_vecs: torch.Tensor, item_vecs: torch.Tensor, samples: int, noise_var: float = 0.0
) -> torch.Tensor:
    """Posterior standard deviation of each pair's score over the kept samples.

    Parameters
    ----------
    user_vecs, item_vecs : torch.Tensor, shape (B, S * rank)
        Rows of the concatenated embeddings (:meth:`GibbsSampler.result`) of the pairs.
    samples : int
        ``S``.
    noise_var : float
        Added to the variance (``1 / noise_precision``) for the predictive spread of
        a new rating rather than of its expected value.

    Returns
    -------
    torch.Tensor, shape (B,)
        Standard deviation over samples of ``p_u^s . q_i^s`` (the biases enter as
        their posterior means, so their own spread is not included).
    """
    b, d = user_vecs.shape
    if d % samples:
        raise ValueError(f"embedding width {d} is not a multiple of samples={samples}")
    per_sample = (user_vecs.reshape(b, samples, -1) * item_vecs.reshape(b, samples, -1)).sum(2) * samples
    return (per_sample.var(1, unbiased=False) + noise_var).sqrt()
