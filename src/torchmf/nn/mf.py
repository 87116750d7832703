"""Matrix factorization as a plain ``nn.Module``: no training logic here."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MFModel"]


class MFModel(nn.Module):
    """Dot product of user and item embeddings, plus optional biases.

    With the defaults this is exactly the seed model: ``forward(user, item) =
    (user_embs(user) * item_embs(item)).sum(1)`` with ``nn.Embedding``'s N(0, 1)
    init, trainable with ``nn.MSELoss`` and ``torch.optim.SGD``.

    Parameters
    ----------
    num_users, num_items : int
    embedding_dim : int
        Number of latent factors ``d``.
    biases : bool
        Add a global bias and per-user / per-item biases to the score.
    init_std : float, optional
        Draw embeddings from N(0, init_std) instead of N(0, 1). The estimator
        uses a small value (about ``0.1``) so training starts near the bias model.
    sparse : bool
        Sparse embedding gradients (for ``torch.optim.SparseAdam``).

    Attributes
    ----------
    user_embs : nn.Embedding, weight shape (num_users, d)
    item_embs : nn.Embedding, weight shape (num_items, d)
    user_bias, item_bias : nn.Embedding, weight shape (n, 1), only with ``biases``
    global_bias : nn.Parameter, shape (), only with ``biases``
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        biases: bool = False,
        init_std: float | None = None,
        sparse: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.user_embs = nn.Embedding(num_users, embedding_dim, sparse=sparse)
        self.item_embs = nn.Embedding(num_items, embedding_dim, sparse=sparse)
        if init_std is not None or generator is not None:
            std = 1.0 if init_std is None else init_std
            with torch.no_grad():
                self.user_embs.weight.normal_(0.0, std, generator=generator)
                self.item_embs.weight.normal_(0.0, std, generator=generator)
        self.biases = biases
        if biases:
            self.user_bias = nn.Embedding(num_users, 1, sparse=sparse)
            self.item_bias = nn.Embedding(num_items, 1, sparse=sparse)
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.global_bias = nn.Parameter(torch.zeros(()))

    @property
    def num_users(self) -> int:
        return self.user_embs.num_embeddings

    @property
    def num_items(self) -> int:
        return self.item_embs.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.user_embs.embedding_dim

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs.

        Parameters
        ----------
        user, item : torch.LongTensor, shape (B,)

        Returns
        -------
        torch.Tensor, shape (B,)
        """
        out = (self.user_embs(user) * self.item_embs(item)).sum(1)
        if self.biases:
            out = out + self.global_bias + self.user_bias(user).squeeze(1) + self.item_bias(item).squeeze(1)
        return out

    def score_all(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item (or of ``items``) for each user.

        Parameters
        ----------
        users : torch.LongTensor, shape (B,)
        items : torch.LongTensor, shape (M,), optional
            Candidate items; all items when None.

        Returns
        -------
        torch.Tensor, shape (B, num_items) or (B, M)
        """
        item_w = self.item_embs.weight if items is None else self.item_embs.weight[items]
        scores = self.user_embs.weight[users] @ item_w.T
        if self.biases:
            item_b = self.item_bias.weight[:, 0] if items is None else self.item_bias.weight[items, 0]
            scores = scores + (self.global_bias + self.user_bias.weight[users, 0])[:, None] + item_b[None, :]
        return scores

    def resize(self, num_users: int) -> None:
        """Grow the user tables to ``num_users`` rows (new rows zero); used by fold-in."""
        extra = num_users - self.num_users
        if extra <= 0:
            return
        tables = [self.user_embs] + ([self.user_bias] if self.biases else [])
        for table in tables:
            w = table.weight.data
            grown = torch.cat([w, w.new_zeros(extra, w.shape[1])])
            table.weight = nn.Parameter(grown)
            table.num_embeddings = num_users

    def grow(self, num_users: int, num_items: int, init_std: float = 0.1,
             generator: torch.Generator | None = None) -> None:
        """Grow both sides' tables to ``num_users`` and ``num_items`` rows (incremental updates).

        Existing rows are kept. New embedding rows are drawn from N(0, init_std)
        with ``generator`` (on the CPU, users first, as at construction) and new
        bias rows start at zero. Shrinking is not supported: smaller sizes leave
        a side as it is.
        """
        for n, table, bias in ((num_users, self.user_embs, "user_bias"), (num_items, self.item_embs, "item_bias")):
            extra = n - table.num_embeddings
            if extra <= 0:
                continue
            w = table.weight.data
            new = torch.empty(extra, w.shape[1], dtype=w.dtype).normal_(0.0, init_std, generator=generator)
            table.weight = nn.Parameter(torch.cat([w, new.to(w.device)]), requires_grad=table.weight.requires_grad)
            table.num_embeddings = n
            if self.biases:
                b = getattr(self, bias)
                bw = b.weight.data
                b.weight = nn.Parameter(torch.cat([bw, bw.new_zeros(extra, 1)]), requires_grad=b.weight.requires_grad)
                b.num_embeddings = n
