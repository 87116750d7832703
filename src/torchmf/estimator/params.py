"""Hyperparameters of :class:`~torchmf.MatrixFactorization`: defaults and validation.

Some defaults depend on the objective and the solver (an ALS sweep is not an
SGD epoch; BPR wants Adagrad, squared error plain SGD), so a parameter left as
``None`` means "the default of this loss and solver", resolved at fit time by
:func:`resolve`. ``get_params()`` returns what the user set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from torchmf.solvers.optim import OPTIMIZERS

__all__ = [
    "IMPLICIT_LOSSES",
    "LOSSES",
    "LOSS_SOLVERS",
    "SOLVERS",
    "Params",
    "is_implicit_loss",
    "resolve",
    "validate",
]

SOLVERS = ("als", "sgd")
EXPLICIT_LOSSES = ("mse",)
PAIRWISE_LOSSES = ("bpr", "logistic", "warp")
IMPLICIT_LOSSES = ("ials", *PAIRWISE_LOSSES)
LOSSES = EXPLICIT_LOSSES + IMPLICIT_LOSSES
# which solvers can train each loss; the first is the default
LOSS_SOLVERS: dict[str, tuple[str, ...]] = {
    "mse": ("als", "sgd"),
    "ials": ("als",),
    "bpr": ("sgd",),
    "logistic": ("sgd",),
    "warp": ("sgd",),
}
CONFIDENCE = ("linear", "log")
SAMPLING = ("uniform", "popularity")

# Values that do not apply to a (loss, solver) are neutral fillers so that the
# effective parameters are always complete, JSON-serialisable numbers/strings.
_NEUTRAL: dict[str, Any] = {
    "lr": 0.0, "reg_bias": 0.0, "optimizer": "sgd", "alpha": 0.0, "unobserved_weight": 0.0, "negatives": 0,
}

_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # Explicit defaults chosen on ML-100k's five canonical folds
    # (benchmarks/explicit.py; results in benchmarks/RESULTS.md): they trade a
    # little accuracy for a fit time no slower than Surprise's SVD.
    ("mse", "als"): {"epochs": 5, "reg": 0.35, "reg_bias": 0.2, "reg_exponent": 0.75, "biases": True},
    ("mse", "sgd"): {"epochs": 40, "lr": 0.01, "reg": 0.1, "reg_bias": 0.01, "reg_exponent": 1.0, "biases": True},
    # iALS (Hu et al. 2008 + Rendle et al. 2022 regularisation), tuned by
    # benchmarks/implicit_tune.py --grid on two validation splits carved out
    # of the *training* part of ML-100k (per-user 80/20 of the 80%), never on
    # the held-out test items; then checked once on the protocol's test split,
    # on two other split seeds and on synthetic(implicit=True). Findings:
    # - binary data has no strength signal, so ``alpha`` only sets the ratio of
    #   observed to unobserved weight, (1 + alpha) / unobserved_weight; the
    #   optimum is a ratio of about 5-7 (2 / 0.3 here; 5 / 1 ties), flat
    #   around it; 20 or more (unobserved weight 0.1 or less) loses 0.03-0.1 NDCG;
    # - reg_exponent 1 (Rendle et al.'s nu = 1: the penalty grows with
    #   n_u + a0 * n_items) beat 0.5 and 0.75 by 0.01-0.1; with it the best
    #   reg is 0.02-0.03 for 32 to 128 factors, so the shared default of 48
    #   factors stays (64 and 128 are within the splits' +-0.002 noise);
    # - 8 sweeps with 3 warm-started CG steps match exact Cholesky solves and
    #   4-32 sweeps (the next sweep's warm start corrects the CG error).
    ("ials", "als"): {
        "epochs": 8, "reg": 0.03, "reg_exponent": 1.0, "alpha": 1.0, "unobserved_weight": 0.3, "biases": False,
    },
    # Sampled-negative losses, same protocol (implicit_tune.py --grid --loss bpr,
    # then reg checked per loss): Adagrad copes with the very different update
    # frequencies of popular and rare items and beat plain SGD by ~0.006 NDCG;
    # lr 0.05 beat 0.02 and 0.1; reg peaked at 0.016-0.03 (0.002: -0.02 for
    # BPR/logistic). On ML-100k validation they reach NDCG@10 0.249 (BPR),
    # 0.251 (logistic), 0.221 (WARP) against iALS's 0.280, which is why iALS is
    # the recommended implicit loss (as Rendle et al. 2022 also found).
    ("bpr", "sgd"): {
        "epochs": 30, "lr": 0.05, "reg": 0.016, "reg_exponent": 1.0, "optimizer": "adagrad", "negatives": 1,
        "biases": False,
    },
    ("logistic", "sgd"): {
        "epochs": 30, "lr": 0.05, "reg": 0.016, "reg_exponent": 1.0, "optimizer": "adagrad", "negatives": 4,
        "biases": False,
    },
    # WARP estimates a positive's rank from how many of N negatives beat it,
    # so it needs more than one negative to be anything but BPR with a hinge.
    ("warp", "sgd"): {
        "epochs": 30, "lr": 0.05, "reg": 0.016, "reg_exponent": 1.0, "optimizer": "adagrad", "negatives": 10,
        "biases": False,
    },
}


@dataclass
class Params:
    """Every hyperparameter, as the user gave it (None = default of the loss/solver).

    Attributes mirror :class:`~torchmf.MatrixFactorization`'s arguments.
    """

    factors: int = 48
    epochs: int | None = None
    solver: str | None = None
    loss: str = "mse"
    lr: float | None = None
    reg: float | None = None
    reg_bias: float | None = None
    reg_exponent: float | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    biases: bool | None = None
    init_std: float = 0.1
    cg_steps: int = 3
    alpha: float | None = None
    confidence: str = "linear"
    confidence_eps: float = 1.0
    unobserved_weight: float | None = None
    negatives: int | None = None
    negative_sampling: str = "uniform"
    early_stopping: int | None = None
    device: str = "auto"
    seed: int = 0
    verbose: bool = True

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def is_implicit_loss(loss: str) -> bool:
    """True for the implicit-feedback objectives (scores are rankings, not ratings)."""
    return loss in IMPLICIT_LOSSES


def _check(cond: bool, name: str, value: Any, want: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(p: Params) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter (or both of a bad pair)."""
    _check(_is_int(p.factors) and p.factors > 0, "factors", p.factors, "a positive integer")
    _check(p.epochs is None or (_is_int(p.epochs) and p.epochs > 0), "epochs", p.epochs, "a positive integer")
    _check(p.solver is None or p.solver in SOLVERS, "solver", p.solver, f"one of {SOLVERS}")
    _check(p.loss in LOSSES, "loss", p.loss, f"one of {LOSSES}")
    if p.solver is not None and p.solver not in LOSS_SOLVERS[p.loss]:
        allowed = " or ".join(repr(s) for s in LOSS_SOLVERS[p.loss])
        raise ValueError(f"loss={p.loss!r} cannot be trained with solver={p.solver!r}; use solver={allowed}")
    _check(p.lr is None or (_is_num(p.lr) and p.lr > 0), "lr", p.lr, "a positive number")
    for name in ("reg", "reg_bias", "reg_exponent", "alpha", "unobserved_weight"):
        v = getattr(p, name)
        _check(v is None or (_is_num(v) and v >= 0), name, v, "a non-negative number")
    _check(p.optimizer is None or p.optimizer in OPTIMIZERS, "optimizer", p.optimizer, f"one of {sorted(OPTIMIZERS)}")
    _check(
        p.batch_size is None or (_is_int(p.batch_size) and p.batch_size > 0),
        "batch_size", p.batch_size, "None (automatic) or a positive integer",
    )
    _check(p.biases is None or isinstance(p.biases, bool), "biases", p.biases, "True, False or None")
    if p.biases and is_implicit_loss(p.loss):
        raise ValueError(f"biases=True is not supported with loss={p.loss!r}; implicit losses fit no biases")
    _check(_is_num(p.init_std) and p.init_std > 0, "init_std", p.init_std, "a positive number")
    _check(_is_int(p.cg_steps) and p.cg_steps >= 0, "cg_steps", p.cg_steps, "a non-negative integer")
    _check(p.confidence in CONFIDENCE, "confidence", p.confidence, f"one of {CONFIDENCE}")
    _check(_is_num(p.confidence_eps) and p.confidence_eps > 0, "confidence_eps", p.confidence_eps, "a positive number")
    _check(p.negatives is None or (_is_int(p.negatives) and p.negatives > 0), "negatives", p.negatives,
           "a positive integer")
    _check(p.negative_sampling in SAMPLING, "negative_sampling", p.negative_sampling, f"one of {SAMPLING}")
    _check(
        p.early_stopping is None or (_is_int(p.early_stopping) and p.early_stopping > 0),
        "early_stopping", p.early_stopping, "None or a positive integer (patience in epochs)",
    )
    _check(_is_int(p.seed), "seed", p.seed, "an integer")
    _check(isinstance(p.verbose, bool), "verbose", p.verbose, "True or False")
    _check(isinstance(p.device, str), "device", p.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    if p.device != "auto":
        try:
            dev = torch.device(p.device)
        except (RuntimeError, TypeError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {p.device!r}")


def resolve(p: Params) -> dict[str, Any]:
    """Effective hyperparameters: the user's values with loss/solver defaults filled in."""
    out = {name: getattr(p, name) for name in Params.names()}
    if out["solver"] is None:
        out["solver"] = LOSS_SOLVERS[p.loss][0]
    for name, default in {**_NEUTRAL, **_DEFAULTS[(p.loss, out["solver"])]}.items():
        if out[name] is None:
            out[name] = default
    return out


def auto_batch_size(loss: str, n_interactions: int) -> int:
    """Batch size used when ``batch_size=None``.

    Squared-error SGD sums per-rating gradients (Funk-SVD), so a row that
    appears ``c`` times in a batch takes a step ``c`` times as long; on small
    data a 16k batch holds a popular item dozens of times and diverges. About
    64 batches an epoch keeps that count low; large data still gets large,
    fast batches. Ranking losses were tuned with 16384 (see ``_DEFAULTS``).
    """
    if loss == "mse":
        return int(min(16384, max(256, n_interactions // 64)))
    return 16384
