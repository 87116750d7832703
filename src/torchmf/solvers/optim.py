"""Row-sparse optimisers for embedding tables, updated by hand.

A minibatch touches a few rows of each table; these optimisers take
``(rows, row_gradients)`` (rows may repeat) and update only what they must.
Writing them by hand, rather than through autograd and ``torch.optim``, removes
the dense gradient buffers and graph bookkeeping that dominate a step this small.
"""

from __future__ import annotations

import torch

__all__ = ["OPTIMIZERS", "Hogwild", "RowOptimizer", "load_training_state", "make_optimizer", "training_state"]


class RowOptimizer:
    """Base class: ``step(table_name, rows, grad)`` for each table, once a batch.

    ``step`` may overwrite ``grad`` (the solver passes scratch buffers).

    Parameters
    ----------
    tables : dict of str -> torch.Tensor
        Parameters to update in place, each of shape (n, d) or (n,).
    lr : float
    """

    def __init__(self, tables: dict[str, torch.Tensor], lr: float) -> None:
        self.tables = tables
        self.lr = lr

    def step(self, name: str, rows: torch.Tensor, grad: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The optimiser's state as named tensors (empty for plain SGD), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back what :meth:`state_dict` returned (copied into the existing buffers)."""
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        if missing:
            raise KeyError(f"optimizer state lacks {missing[0]!r}")
        for key, t in mine.items():
            t.copy_(state[key].to(t.device, t.dtype))


class SGD(RowOptimizer):
    """Plain SGD: ``w[row] -= lr * g`` for each occurrence of a row (Funk-SVD)."""

    def step(self, name: str, rows: torch.Tensor, grad: torch.Tensor) -> None:
        # scaling first and adding with alpha=1 is ~5x faster on CPU than
        # index_add_(..., alpha=-lr), which takes a slow path
        self.tables[name].index_add_(0, rows, grad.mul_(-self.lr))


class Adagrad(RowOptimizer):
    """Adagrad with per-coordinate accumulators, updated only on touched rows."""

    def __init__(self, tables: dict[str, torch.Tensor], lr: float, eps: float = 1e-8) -> None:
        super().__init__(tables, lr)
        self.eps = eps
        self.acc = {k: torch.zeros_like(v) for k, v in tables.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"acc.{k}": v for k, v in self.acc.items()}

    def step(self, name: str, rows: torch.Tensor, grad: torch.Tensor) -> None:
        acc = self.acc[name]
        acc.index_add_(0, rows, grad * grad)
        scale = acc.index_select(0, rows).sqrt_().add_(self.eps).reciprocal_().mul_(-self.lr)
        self.tables[name].index_add_(0, rows, grad.mul_(scale))


class Adam(RowOptimizer):
    """Dense Adam: every row's moments decay each step, as ``torch.optim.Adam``."""

    def __init__(
        self, tables: dict[str, torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(tables, lr)
        self.betas, self.eps = betas, eps
        self.m = {k: torch.zeros_like(v) for k, v in tables.items()}
        self.v = {k: torch.zeros_like(v) for k, v in tables.items()}
        self.t = {k: 0 for k in tables}

    def state_dict(self) -> dict[str, torch.Tensor]:
        steps = torch.tensor([self.t[k] for k in self.tables], dtype=torch.int64)
        return {**{f"m.{k}": v for k, v in self.m.items()}, **{f"v.{k}": v for k, v in self.v.items()}, "t": steps}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "t" not in state:
            raise KeyError("optimizer state lacks 't'")
        self.t = dict(zip(self.tables, (int(x) for x in state["t"].tolist()), strict=True))
        super().load_state_dict({**state, "t": torch.zeros(len(self.tables), dtype=torch.int64)})

    def step(self, name: str, rows: torch.Tensor, grad: torch.Tensor) -> None:
        dense = torch.zeros_like(self.tables[name]).index_add_(0, rows, grad)
        self._update(name, slice(None), dense)

    def _update(self, name: str, rows: torch.Tensor | slice, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t[name] += 1
        t = self.t[name]
        m = self.m[name][rows] * b1 + grad * (1 - b1)
        v = self.v[name][rows] * b2 + grad * grad * (1 - b2)
        self.m[name][rows] = m
        self.v[name][rows] = v
        step = self.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        self.tables[name][rows] -= step * m / (v.sqrt() + self.eps)


class SparseAdam(Adam):
    """Lazy Adam (as ``torch.optim.SparseAdam``): only touched rows' moments move.

    Pays off when tables are large and batches touch few of their rows.
    """

    def step(self, name: str, rows: torch.Tensor, grad: torch.Tensor) -> None:
        uniq, inverse = torch.unique(rows, return_inverse=True)
        summed = grad.new_zeros((len(uniq), *grad.shape[1:])).index_add_(0, inverse, grad)
        self._update(name, uniq, summed)


class Hogwild(SGD):
    """Lock-free per-sample SGD (Hogwild!, Recht et al. 2011) for BPR on the CPU.

    Not a minibatch optimiser: a BPR fit with it runs
    :func:`torchmf.solvers.pairwise_cpu.make_hogwild_epoch` (each drawn triple's step
    applied at once, by several threads without locks: implicit's algorithm). It keeps
    no state, so a checkpoint holds only the factors.
    """


OPTIMIZERS: dict[str, type[RowOptimizer]] = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "adam": Adam,
    "sparse_adam": SparseAdam,
    "hogwild": Hogwild,
}


def make_optimizer(name: str, tables: dict[str, torch.Tensor], lr: float) -> RowOptimizer:
    """Build the optimiser called ``name`` (one of :data:`OPTIMIZERS`)."""
    try:
        return OPTIMIZERS[name](tables, lr)
    except KeyError:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}") from None


def training_state(generator: torch.Generator, opt: RowOptimizer) -> dict[str, torch.Tensor]:
    """An SGD-family solver's state beyond the model: its RNG and its optimiser's buffers.

    Returns
    -------
    dict of str -> torch.Tensor
        ``rng`` (the generator's state, uint8) and ``opt.<name>`` per optimiser buffer.
    """
    return {"rng": generator.get_state(), **{f"opt.{k}": v for k, v in opt.state_dict().items()}}


def load_training_state(generator: torch.Generator, opt: RowOptimizer, state: dict[str, torch.Tensor]) -> None:
    """Put back what :func:`training_state` returned, so the next epoch continues bit-identically."""
    if "rng" not in state:
        raise KeyError("solver state lacks 'rng'")
    generator.set_state(state["rng"].to("cpu", torch.uint8))
    opt.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("opt.")})
