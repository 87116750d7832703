"""Exact top-k: score every (candidate) item with one matrix product per block of queries."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from torchmf.nn.mf import MFModel
from torchmf.retrieval.base import CSR

__all__ = ["ExactIndex"]

# queries scored at once: bounds the (block, n_items) score matrix
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
        """See :meth:`torchmf.retrieval.base.Index.search`."""
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
        for start in range(0, B, block):
            stop = min(B, start + block)
            with torch.no_grad():
                off = None if offsets is None else offsets[start:stop]
                s = self.scores(queries[start:stop], off, cand_t).float()
                if exclude is not None:
                    _mask(s, exclude, start, stop, col_of)
                top_s, top_i = torch.topk(s, kk, dim=1)
            if cand_t is not None:
                top_i = cand_t[top_i]
            top_i = torch.where(torch.isfinite(top_s), top_i, torch.full_like(top_i, -1))
            out_items[start:stop, :kk] = top_i.cpu().numpy()
            out_scores[start:stop, :kk] = top_s.cpu().numpy()
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


def _mask(scores: torch.Tensor, exclude: CSR, start: int, stop: int, col_of: np.ndarray | None) -> None:
    """Set the excluded entries of rows ``start:stop`` of the query block to -inf, in place."""
    indptr, indices = exclude
    lo, hi = int(indptr[start]), int(indptr[stop])
    if hi == lo:
        return
    counts = np.diff(indptr[start : stop + 1])
    row_ids = np.repeat(np.arange(stop - start), counts)
    cols = np.asarray(indices[lo:hi], dtype=np.int64)
    if col_of is not None:
        cols = col_of[cols]
        row_ids, cols = row_ids[cols >= 0], cols[cols >= 0]
    dev = scores.device
    scores[torch.as_tensor(row_ids, device=dev), torch.as_tensor(cols, device=dev)] = -torch.inf
