"""Exact top-k: score every (candidate) item with one matrix product per block of queries."""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import torch

from torchmf.device import cpu_has_bf16_dot, thread_policy
from torchmf.nn.mf import MFModel
from torchmf.retrieval.base import CSR, csr_rows
from torchmf.retrieval.screen import MIN_SCREEN_QUERIES, screened_top_k
from torchmf.retrieval.topk import mask_excluded, topk_rows

__all__ = ["ExactIndex"]

log = logging.getLogger(__name__)

# queries scored at once: bounds the (block, n_items) score matrix. On 2 CPU cores (100k users x 20k
# items, 64 factors) 2**23-2**25 took the least CPU; blocks of under ~100 rows made the product
# several times slower (and BLAS rounds it differently).
_SCORE_ELEMENTS = 1 << 24


class ExactIndex:
    """Brute-force maximum-inner-product search.

    Parameters
    ----------
    item_vectors : torch.Tensor, shape (n_items, d)
    item_bias : torch.Tensor, shape (n_items,), optional
    """

    kind: ClassVar[str] = "exact"

    def __init__(self, item_vectors: torch.Tensor, item_bias: torch.Tensor | None = None) -> None:
        self.item_vectors = item_vectors
        self.item_bias = item_bias

    @classmethod
    def from_model(cls, model: MFModel) -> ExactIndex:
        """The index of ``model``'s items (views of its weights, not copies)."""
        return cls(model.item_embs.weight, model.item_bias.weight[:, 0] if model.biases else None)

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    def scores(self, queries: torch.Tensor, offsets: torch.Tensor | None = None,
               candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Dense scores, shape (B, n_items) or (B, M) for ``candidates`` of shape (M,)."""
        w = self.item_vectors if candidates is None else self.item_vectors[candidates]
        out = queries @ w.T
        if offsets is not None:
            out = out + offsets[:, None]
        if self.item_bias is not None:
            b = self.item_bias if candidates is None else self.item_bias[candidates]
            out = out + b[None, :]
        return out

    def search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        offsets: torch.Tensor | None = None,
        exclude: CSR | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`torchmf.retrieval.base.Index.search`.

        Queries are scored a block at a time into one preallocated ``(block, n_cols)``
        buffer (the product written in place, offsets and biases added in place, the
        excluded entries set to -inf through their flat positions), and each block's
        top-k is taken before the next is scored. Reusing one buffer saves the page
        faults of a fresh 64 MB block per step (~30 % of the CPU time of all-user
        top-10 at 100k x 20k).

        On CPUs with native bfloat16 products, batches of at least
        ``MIN_SCREEN_QUERIES`` float32 queries over the whole catalogue are screened
        by a bfloat16 product and re-scored exactly (:mod:`torchmf.retrieval.screen`:
        the same results, proven per row; rows it cannot prove are scored in float32).
        """
        dev = self.item_vectors.device
        cand_t = None if candidates is None else torch.as_tensor(candidates, device=dev)
        n_cols = self.n_items if cand_t is None else len(cand_t)
        col_of = None
        if cand_t is not None and exclude is not None:  # item index -> column among candidates, -1 elsewhere
            col_of = np.full(self.n_items, -1, dtype=np.int64)
            col_of[np.asarray(candidates)] = np.arange(n_cols)
        B = len(queries)
        kk = min(k, n_cols)
        block = max(1, _SCORE_ELEMENTS // max(1, n_cols))
        out_items = np.full((B, k), -1, dtype=np.int64)
        out_scores = np.full((B, k), -np.inf, dtype=np.float32)
        if B == 0 or kk == 0:
            return out_items, out_scores
        # threads matched to the free cores (torchmf.device.thread_policy): a descheduled thread stalls
        # each block's product and topk at OpenMP's barrier on a busy machine
        with torch.no_grad(), thread_policy(block * n_cols, dev) as threads:
            w = self.item_vectors if cand_t is None else self.item_vectors[cand_t]
            bias = None if self.item_bias is None else (self.item_bias if cand_t is None else self.item_bias[cand_t])
            top_i = torch.empty((B, kk), dtype=torch.int64, device=dev)
            top_s = torch.empty((B, kk), dtype=torch.float32, device=dev)
            rows = np.arange(B)
            if (cand_t is None and dev.type == "cpu" and B >= MIN_SCREEN_QUERIES and 4 * kk <= n_cols
                    and queries.dtype == w.dtype == torch.float32 and cpu_has_bf16_dot()):
                ok = _screened(queries, w, bias, kk, exclude, block, threads, top_s, top_i)
                rows = np.flatnonzero(~ok.numpy())
                log.debug("bfloat16 screen: %d of %d rows left to the float32 path", len(rows), B)
                if len(rows) and exclude is not None:
                    exclude = csr_rows(np.asarray(exclude[0]), np.asarray(exclude[1]), rows)
                if offsets is not None:
                    top_s.add_(offsets[:, None])
            if len(rows):  # every row (float32 path), or the rows the screen could not prove
                sub = torch.as_tensor(rows) if len(rows) < B else slice(None)
                s_out, i_out = top_s[sub], top_i[sub]
                _float32_blocks(queries[sub], w, bias, None if offsets is None else offsets[sub], kk, exclude,
                                col_of, block, threads, s_out, i_out)
                top_s[sub], top_i[sub] = s_out, i_out
            if cand_t is not None:
                top_i = cand_t[top_i]
            top_i.masked_fill_(~torch.isfinite(top_s), -1)
        out_items[:, :kk] = top_i.cpu().numpy()
        out_scores[:, :kk] = top_s.cpu().numpy()
        return out_items, out_scores

    def similar(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Items closest to each of ``items`` by cosine similarity of their vectors, the item itself excluded.

        Parameters
        ----------
        items : numpy.ndarray of int64, shape (B,)
        k : int

        Returns
        -------
        items, scores : numpy.ndarray, shape (B, min(k, n_items - 1)); scores are cosines in [-1, 1]
        """
        with torch.no_grad():
            w = torch.nn.functional.normalize(self.item_vectors.float(), dim=1)
            idx = torch.as_tensor(items, device=w.device)
            sims = w[idx] @ w.T
            sims[torch.arange(len(idx), device=w.device), idx] = -torch.inf
            top_s, top_i = torch.topk(sims, min(k, self.n_items - 1), dim=1)
        return top_i.cpu().numpy(), top_s.cpu().numpy()


def _float32_blocks(queries: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor | None,
                    kk: int, exclude: CSR | None, col_of: np.ndarray | None, block: int, threads,
                    top_s: torch.Tensor, top_i: torch.Tensor) -> None:
    """Top-``kk`` of every query by the float32 product, a block of queries at a time, into ``top_s``/``top_i``."""
    B, n_cols = len(queries), w.shape[0]
    wt = w.T
    dtype = torch.promote_types(queries.dtype, w.dtype)
    buf = torch.empty(min(block, B) * n_cols, dtype=dtype, device=w.device)
    for start in range(0, B, block):
        stop = min(B, start + block)
        threads.refresh()
        s = buf[: (stop - start) * n_cols].view(stop - start, n_cols)
        torch.matmul(queries[start:stop], wt, out=s)
        if offsets is not None:
            s.add_(offsets[start:stop, None])
        if bias is not None:
            s.add_(bias[None, :])
        s = s.float()  # a no-op for float32 factors
        if exclude is not None:
            mask_excluded(s, exclude, start, stop, col_of)
        topk_rows(s, kk, top_s[start:stop], top_i[start:stop])


def _screened(queries: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, kk: int, exclude: CSR | None,
              block: int, threads, top_s: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
    """Top-``kk`` of every query screened in bfloat16 (:mod:`torchmf.retrieval.screen`), offsets not added.

    Returns the (B,) bool tensor of rows proven exact; the others' entries are to be recomputed.
    """
    w32 = w if bias is None else torch.cat([w, bias[:, None]], 1)
    w16 = w32.to(torch.bfloat16)
    w_max = float(torch.linalg.vector_norm(w32, dim=1).max())
    B, n_cols = len(queries), w.shape[0]
    buf = torch.empty(min(block, B) * n_cols, dtype=torch.bfloat16)
    ok = torch.empty(B, dtype=torch.bool)
    for start in range(0, B, block):
        stop = min(B, start + block)
        threads.refresh()
        a = queries[start:stop]
        if bias is not None:
            a = torch.cat([a, a.new_ones((stop - start, 1))], 1)
        top_s[start:stop], top_i[start:stop], ok[start:stop] = screened_top_k(
            a, w16, w32, w_max, kk, exclude, start, buf)
    return ok
