"""Bayesian matrix factorization by Gibbs sampling (Salakhutdinov & Mnih 2008; Rendle's myFM).

Model: ``r_ui = mean + w0 + b_u + c_i + p_u . q_i + noise``, noise precision
``alpha ~ Gamma(a0, b0)`` (times per-user and per-item scales when ``robust``);
each side's rows ``a_u = [p_u, b_u]`` are ``N(mu, diag(lam)^-1)`` with a
Normal-Gamma hyperprior per dimension (``lam_f ~ Gamma(a0, b0)``,
``mu_f | lam_f ~ N(0, 1 / (g0 lam_f))``, myFM's defaults ``a0 = b0 = g0 = 1``);
``w0 ~ N(0, 1)`` on the centred ratings.

One sweep draws every user row given the items (an ALS-shaped solve per row:
batched Cholesky of ``diag(lam) + alpha F_u^T F_u`` plus ``L^-T z``; the
``F_u^T F_u`` come from one sparse product of the rating pattern with a table
of the items' ``f f^T`` upper triangles, one kernel per half-sweep instead of
gathering padded blocks bucket by bucket as ALS does), the users'
hyperparameters (and noise scales), then the same for the items, then
``alpha`` and ``w0``. With ``implicit_features`` the rows' prior means also
depend on their rated sets (see :mod:`torchmf.solvers.gibbs_features`).

Predictions average over the kept samples. Because
``sum_s p_u^s . q_i^s / S = [p_u^1 .. p_u^S] / sqrt(S) . [q_i^1 .. q_i^S] / sqrt(S)``,
:meth:`GibbsSampler.result` returns ``S * rank``-wide concatenations (biases
averaged) that an ordinary dot-product model scores exactly; the per-sample
products are recovered by reshaping to ``(S, rank)`` (:func:`posterior_std`).
Memory of the result: ``(n_users + n_items) * S * rank`` floats, e.g. 21 MB for
ML-100k at ``S = 200, rank = 10``; ``thin`` keeps every ``thin``-th sweep only.
While sampling: a per-row table of ``(rank + 2) (rank + 3) / 2`` floats on each
side, and precision matrices in blocks of at most ``_CHUNK_ELEMENTS`` floats.
All randomness comes from one ``torch.Generator`` on the data's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from torchmf.data.csr import csr_order
from torchmf.solvers.gibbs_draws import A0, B0, draw_rows, normal_gamma, posterior_std
from torchmf.solvers.gibbs_features import ImplicitBlock, implicit_block

__all__ = ["GibbsSampler", "draw_rows", "gibbs_fit", "posterior_std"]

# prior precision of the global offset w0 (on ratings centred by their mean)
W0_PREC = 1.0
# robust likelihood: per-row noise scales s_u, s_i ~ Gamma(NU/2, NU/2) (mean 1), precision alpha s_u s_i;
# NU chosen on a 90/10 split of ML-100k u1.base (benchmarks/gibbs.py --tune): 16 against 2-64 and none
NU = 16.0
# rows per block bound its (rows, m, m) precision matrices to this many elements
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class _RowChunk:
    """Rows ``start:stop`` of one side's rating matrix as CSR (pattern and centred values)."""

    start: int
    stop: int
    pattern: torch.Tensor  # sparse CSR (rows, n_other), ones
    values: torch.Tensor  # sparse CSR (rows, n_other), centred ratings
    squares: torch.Tensor  # sparse CSR (rows, n_other), squared centred ratings
    counts: torch.Tensor  # (rows,) ratings per row (float)


@dataclass
class _Side:
    """One side's rows ``[factors, bias]``, their hyperparameters and layout."""

    chunks: list[_RowChunk]
    rows: torch.Tensor  # (n, m)
    mu: torch.Tensor  # (m,)
    lam: torch.Tensor  # (m,)
    block: ImplicitBlock | None = None
    w: torch.Tensor | None = None  # (n_other, m) weights of the rated-set features
    mu_w: torch.Tensor | None = None
    lam_w: torch.Tensor | None = None
    noise: torch.Tensor | None = None  # (n,) per-row noise precision scales (robust likelihood)
    kept: list[torch.Tensor] = field(default_factory=list)
    bias_sum: torch.Tensor | None = None

    def prior_mean(self) -> torch.Tensor:
        """Each row's prior mean, shape (n, m)."""
        if self.block is None:
            return self.mu.expand_as(self.rows)
        return self.mu + self.block.mean_shift(self.w)


def _row_chunks(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, n_other: int, per_chunk: int,
                device: torch.device) -> list[_RowChunk]:
    """Cut one side's ratings into CSR blocks of at most ``per_chunk`` rows."""
    indptr, order = csr_order(rows, cols, n, n_other)
    cols_s = torch.as_tensor(cols[order], device=device)
    vals_s = torch.as_tensor(vals[order], dtype=torch.float32, device=device)
    counts = np.diff(indptr).astype(np.float32)
    out = []
    for start in range(0, n, per_chunk):
        stop = min(n, start + per_chunk)
        e0, e1 = int(indptr[start]), int(indptr[stop])
        ptr = torch.as_tensor(indptr[start:stop + 1] - e0, device=device)
        c, v = cols_s[e0:e1], vals_s[e0:e1]
        out.append(_RowChunk(
            start, stop,
            torch.sparse_csr_tensor(ptr, c, torch.ones_like(v), size=(stop - start, n_other)),
            torch.sparse_csr_tensor(ptr, c, v, size=(stop - start, n_other)),
            torch.sparse_csr_tensor(ptr, c, v.square(), size=(stop - start, n_other)),
            torch.as_tensor(counts[start:stop], device=device),
        ))
    return out


class GibbsSampler:
    """State of one Gibbs chain over a rating matrix.

    Parameters
    ----------
    users, items : numpy.ndarray of int64, shape (nnz,)
        Rated pairs, indices in ``0..n_users-1`` and ``0..n_items-1``; no pair repeats.
    values : numpy.ndarray, shape (nnz,)
        Ratings.
    n_users, n_items : int
    rank : int
    generator : torch.Generator
        On ``device``; the only source of randomness.
    device : torch.device
    implicit_features : bool
        Give each row a prior mean from its normalised rated set (flipped SVD++).
    init_std : float
        Standard deviation of the initial factors (myFM's default 0.1).
    robust : bool
        Give every rating the noise precision ``alpha * s_u * s_i`` with per-user and
        per-item scales ``s ~ Gamma(NU/2, NU/2)`` (sampled too): a Student-t-like
        likelihood that lets consistent users and items weigh more (Lakshminarayanan
        et al. 2011). False: one ``alpha`` for every rating, as myFM.
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        values: np.ndarray,
        n_users: int,
        n_items: int,
        rank: int,
        generator: torch.Generator,
        device: torch.device,
        implicit_features: bool = False,
        init_std: float = 0.1,
        robust: bool = True,
    ) -> None:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0:
            raise ValueError("Gibbs sampling needs at least one rating")
        self.rank, self.gen, self.device = rank, generator, device
        self.dtype = torch.float32
        self.n_ratings = len(values)
        self.mean = float(values.mean())
        centred = values - self.mean
        self.alpha = torch.ones((), device=device)
        self.w0 = torch.zeros((), device=device)
        self.w0_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n_kept = 0
        m = rank + 1
        self._tri = torch.triu_indices(m, m, device=device)
        tri_pos = torch.zeros(m, m, dtype=torch.long)
        tri_pos[self._tri[0].cpu(), self._tri[1].cpu()] = torch.arange(self._tri.shape[1])
        self._tri_to_full = torch.maximum(tri_pos, tri_pos.T).reshape(-1).to(device)
        per_chunk = max(1, _CHUNK_ELEMENTS // (m * m))
        self.sides = []
        for rows, cols, n, n_other in ((users, items, n_users, n_items), (items, users, n_items, n_users)):
            init = torch.randn((n, m), generator=generator, device=device) * init_std
            init[:, rank] = 0.0
            side = _Side(chunks=_row_chunks(rows, cols, centred, n, n_other, per_chunk, device), rows=init,
                         mu=torch.zeros(m, device=device), lam=torch.ones(m, device=device))
            if robust:
                side.noise = torch.ones(n, device=device)
            if implicit_features:
                side.block = implicit_block(rows, cols, n, n_other, device, self.dtype)
                side.w = torch.zeros((n_other, m), device=device)
                side.mu_w = torch.zeros(m, device=device)
                side.lam_w = torch.ones(m, device=device)
            self.sides.append(side)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device, dtype=self.dtype)

    def _half_sweep(self, side: _Side, other: _Side, with_resid: bool) -> tuple[torch.Tensor, ...]:
        """Draw every row of ``side`` given ``other`` (and, if robust, the rows' noise scales).

        Row ``u``'s conditional is Gaussian with precision ``alpha s_u G_u + diag(lam)``,
        ``G_u = sum_i s_i f_i f_i^T`` over its rated ``i`` with ``f_i = [q_i, 1]``
        (``s`` the per-row noise scales, 1 unless robust), and mean that matrix's
        inverse times ``alpha s_u h_u + lam * prior_u``, ``h_u = sum_i s_i (r_ui - w0 - c_i) f_i``.
        Both come from sparse products of the rating pattern with per-column
        tables (the upper triangle of ``s_i f_i f_i^T``), so no per-rating tensor
        is ever built.

        Returns
        -------
        With ``with_resid``: the sums over all ratings of ``s_u s_i e``, ``s_u s_i e^2``
        and ``s_u s_i`` for the residuals ``e`` of the new sample (before ``w0``'s
        next draw is subtracted: ``e = r - mean - w0 - b_u - c_i - p_u . q_i``).
        """
        k, m = self.rank, self.rank + 1
        i0, i1 = self._tri
        feats = other.rows.clone()
        feats[:, k] = 1.0
        offset = other.rows[:, k] + self.w0
        weight = other.noise if other.noise is not None else torch.ones_like(offset)
        # per other-side row s * (upper triangle of f f^T, f * offset, offset^2); s * (f, offset); s
        wf = feats * weight[:, None]
        by_pattern = torch.cat([wf[:, i0] * feats[:, i1], wf * offset[:, None], (weight * offset.square())[:, None]], 1)
        by_value = torch.cat([wf, (weight * offset)[:, None]], 1)
        prior = side.prior_mean()
        lam, alpha = side.lam, self.alpha
        sums = [torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3)]
        n_tri = i0.shape[0]
        for c in side.chunks:
            sp = c.pattern @ by_pattern
            sv = c.values @ by_value
            gram = sp[:, self._tri_to_full].reshape(-1, m, m)
            h = sv[:, :m] - sp[:, n_tri:n_tri + m]
            scale = alpha if side.noise is None else alpha * side.noise[c.start:c.stop]
            a = draw_rows(gram, h, prior[c.start:c.stop], lam, scale, self.gen)
            side.rows[c.start:c.stop] = a
            if not (with_resid or side.noise is not None):
                continue
            # per row, over its ratings: sum of s_i (t - f.a)^2, t = r - w0 - c
            tt = (c.squares @ weight[:, None]).squeeze(1) - 2 * sv[:, m] + sp[:, -1]
            quad = (a.unsqueeze(1) @ gram @ a.unsqueeze(2)).reshape(-1)
            sse = (tt - 2 * (a * h).sum(1) + quad).clamp_min(0.0)
            if side.noise is not None:  # s_u | rest ~ Gamma(nu/2 + n_u/2, nu/2 + alpha sse_u / 2)
                shape = NU / 2 + c.counts / 2
                side.noise[c.start:c.stop] = torch._standard_gamma(shape, generator=self.gen) / (
                    NU / 2 + alpha * sse / 2)
            if with_resid:
                s_row = side.noise[c.start:c.stop] if side.noise is not None else 1.0
                sums[0] += (s_row * (h[:, k] - (gram[:, k] * a).sum(1))).sum()
                sums[1] += (s_row * sse).sum()
                sums[2] += (s_row * gram[:, k, k]).sum()
        if side.block is not None:
            side.block.sample_weights(side.rows - side.mu, lam, side.w, side.mu_w, side.lam_w, self.gen)
            side.mu, side.lam = normal_gamma(side.rows - side.block.mean_shift(side.w), self.gen)
            side.mu_w, side.lam_w = normal_gamma(side.w, self.gen)
        else:
            side.mu, side.lam = normal_gamma(side.rows, self.gen)
        return tuple(sums)

    def sweep(self) -> float:
        """One Gibbs sweep: users, items, noise precision, global offset.

        Returns
        -------
        float
            Training RMSE of the sample drawn (noise-scale weighted if robust).
        """
        users, items = self.sides
        self._half_sweep(users, items, with_resid=False)
        r_sum, r_sq, w_sum = self._half_sweep(items, users, with_resid=True)
        n = self.n_ratings
        shape = torch.full((), A0 + n / 2, device=self.device)
        self.alpha = (torch._standard_gamma(shape, generator=self.gen) / (B0 + 0.5 * r_sq)).to(self.dtype)
        prec = W0_PREC + self.alpha * w_sum
        mean = self.alpha * (r_sum + w_sum * self.w0) / prec
        self.w0 = (mean + self._randn() / prec.sqrt()).to(self.dtype)
        return math.sqrt(float(r_sq) / float(w_sum))

    def keep(self) -> None:
        """Add the current sample to the posterior average."""
        k = self.rank
        for side in self.sides:
            side.kept.append(side.rows[:, :k].clone())
            bias = side.rows[:, k].double()
            side.bias_sum = bias if side.bias_sum is None else side.bias_sum + bias
        self.w0_sum += self.w0.double()
        self.n_kept += 1

    def current(self) -> dict[str, torch.Tensor]:
        """The current sample in the model's tensor layout (rank-wide embeddings)."""
        users, items = self.sides
        k = self.rank
        return {
            "user_embs.weight": users.rows[:, :k].clone(), "item_embs.weight": items.rows[:, :k].clone(),
            "user_bias.weight": users.rows[:, k:].clone(), "item_bias.weight": items.rows[:, k:].clone(),
            "global_bias": (self.w0 + self.mean).reshape(()),
        }

    def result(self) -> dict[str, torch.Tensor]:
        """Posterior-mean model over the kept samples, in the model's tensor layout.

        Returns
        -------
        dict of torch.Tensor
            ``"user_embs.weight"`` (n_users, S * rank) and ``"item_embs.weight"``
            (n_items, S * rank): the kept samples side by side, divided by
            ``sqrt(S)``; ``"user_bias.weight"`` (n_users, 1), ``"item_bias.weight"``
            (n_items, 1) and ``"global_bias"`` () averaged; ``"noise_precision"`` ()
            the last draw of ``alpha``.
        """
        if self.n_kept == 0:
            raise RuntimeError("no samples kept yet")
        s = self.n_kept
        users, items = self.sides
        out = {}
        for name, side in (("user", users), ("item", items)):
            out[f"{name}_embs.weight"] = torch.cat(side.kept, 1).div_(math.sqrt(s))
            out[f"{name}_bias.weight"] = (side.bias_sum / s).to(self.dtype).unsqueeze(1)
        out["global_bias"] = (self.w0_sum / s + self.mean).to(self.dtype)
        out["noise_precision"] = self.alpha.clone()
        return out


def gibbs_fit(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    n_users: int,
    n_items: int,
    rank: int,
    samples: int,
    burn_in: int,
    generator: torch.Generator,
    device: torch.device,
    implicit_features: bool = False,
    thin: int = 1,
    robust: bool = True,
) -> dict[str, torch.Tensor]:
    """Run a chain: ``burn_in`` sweeps, then ``samples * thin`` sweeps keeping every ``thin``-th.

    Parameters
    ----------
    users, items, values, n_users, n_items, rank, generator, device, implicit_features
        See :class:`GibbsSampler`.
    samples : int
        Number of kept samples ``S`` (>= 1).
    burn_in : int
        Sweeps discarded first (>= 0).
    thin : int
        Sweeps per kept sample (>= 1).
    robust : bool
        See :class:`GibbsSampler`.

    Returns
    -------
    dict of torch.Tensor
        :meth:`GibbsSampler.result`.
    """
    if samples < 1 or burn_in < 0 or thin < 1:
        raise ValueError(f"need samples >= 1, burn_in >= 0, thin >= 1 (got {samples}, {burn_in}, {thin})")
    chain = GibbsSampler(users, items, values, n_users, n_items, rank, generator, device, implicit_features,
                         robust=robust)
    for _ in range(burn_in):
        chain.sweep()
    for t in range(samples * thin):
        chain.sweep()
        if (t + 1) % thin == 0:
            chain.keep()
    return chain.result()
