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

from torchmf import solvers
from torchmf.data.profile import ValueProfile
from torchmf.solvers.optim import OPTIMIZERS

__all__ = ["Params", "resolve", "validate"]

CONFIDENCE = ("linear", "log")
SAMPLING = ("uniform", "popularity")
# what recommend()/similar_items() of a rating model rank by (see torchmf.estimator.ranker)
RANK_BY = ("interactions", "scores")
# a seed must fit torch.Generator.manual_seed and numpy's SeedSequence
_MAX_SEED = 2**63 - 1
# init_std beyond this starts every score orders of magnitude off any rating or rank
_MAX_INIT_STD = 10.0

# Values that do not apply to a (loss, solver) are neutral fillers so that the
# effective parameters are always complete, JSON-serialisable numbers/strings.
_NEUTRAL: dict[str, Any] = {
    "lr": 0.0, "reg_bias": 0.0, "optimizer": "sgd", "alpha": 0.0, "unobserved_weight": 0.0, "negatives": 0,
    "samples": 0, "burn_in": 0, "thin": 0, "implicit_features": False,
    "confidence": "linear", "confidence_eps": 1.0,
}
# Defaults every solver shares unless its own ``defaults`` say otherwise.
_SHARED: dict[str, Any] = {"factors": 48}


@dataclass
class Params:
    """Every hyperparameter, as the user gave it (None = default of the loss/solver).

    Attributes mirror :class:`~torchmf.MatrixFactorization`'s arguments.
    """

    factors: int | None = None
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
    confidence: str | None = None
    confidence_eps: float | None = None
    unobserved_weight: float | None = None
    negatives: int | None = None
    negative_sampling: str = "uniform"
    early_stopping: int | None = None
    samples: int | None = None
    burn_in: int | None = None
    thin: int | None = None
    implicit_features: bool | None = None
    rank_by: str | None = None
    device: str = "auto"
    seed: int = 0
    verbose: bool = True

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _check(cond: bool, name: str, value: Any, want: str) -> None:
    if not cond:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(p: Params) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter (or both of a bad pair)."""
    _check(p.factors is None or (_is_int(p.factors) and p.factors > 0), "factors", p.factors, "a positive integer")
    _check(p.epochs is None or (_is_int(p.epochs) and p.epochs > 0), "epochs", p.epochs, "a positive integer")
    names = solvers.solver_names()
    _check(p.solver is None or p.solver in names, "solver", p.solver, f"one of {names}")
    _check(p.loss in solvers.losses(), "loss", p.loss, f"one of {solvers.losses()}")
    solvers.get_solver(p.loss, p.solver)  # raises for a pair nobody registered
    _check(p.lr is None or (_is_num(p.lr) and p.lr > 0), "lr", p.lr, "a positive number")
    for name in ("reg", "reg_bias", "reg_exponent", "alpha", "unobserved_weight"):
        v = getattr(p, name)
        _check(v is None or (_is_num(v) and v >= 0), name, v, "a non-negative number")
    _check(p.optimizer is None or p.optimizer in OPTIMIZERS, "optimizer", p.optimizer, f"one of {sorted(OPTIMIZERS)}")
    if p.optimizer == "hogwild" and (p.loss != "bpr" or p.negatives not in (None, 1)):
        raise ValueError(f"optimizer='hogwild' is for loss='bpr' with one negative per positive, got loss={p.loss!r}"
                         f", negatives={p.negatives!r}; use 'sgd' or 'adagrad' for the others")
    _check(
        p.batch_size is None or (_is_int(p.batch_size) and p.batch_size > 0),
        "batch_size", p.batch_size, "None (automatic) or a positive integer",
    )
    _check(p.biases is None or isinstance(p.biases, bool), "biases", p.biases, "True, False or None")
    if p.biases and solvers.is_ranking_loss(p.loss):
        raise ValueError(f"biases=True is not supported with loss={p.loss!r}; implicit losses fit no biases")
    _check(
        _is_num(p.init_std) and 0 < p.init_std <= _MAX_INIT_STD, "init_std", p.init_std,
        f"a positive number at most {_MAX_INIT_STD}",
    )
    _check(_is_int(p.cg_steps) and p.cg_steps >= 0, "cg_steps", p.cg_steps, "a non-negative integer")
    _check(p.confidence is None or p.confidence in CONFIDENCE, "confidence", p.confidence,
           f"None (chosen from the data) or one of {CONFIDENCE}")
    _check(p.confidence_eps is None or (_is_num(p.confidence_eps) and p.confidence_eps > 0), "confidence_eps",
           p.confidence_eps, "None (chosen from the data) or a positive number")
    _check(p.rank_by is None or p.rank_by in RANK_BY, "rank_by", p.rank_by, f"None or one of {RANK_BY}")
    if p.rank_by == "interactions" and solvers.is_ranking_loss(p.loss):
        raise ValueError(f"rank_by='interactions' applies to rating losses; loss={p.loss!r} already ranks by "
                         "interactions (use rank_by=None or 'scores')")
    _check(p.negatives is None or (_is_int(p.negatives) and p.negatives > 0), "negatives", p.negatives,
           "a positive integer")
    _check(p.negative_sampling in SAMPLING, "negative_sampling", p.negative_sampling, f"one of {SAMPLING}")
    _check(
        p.early_stopping is None or (_is_int(p.early_stopping) and p.early_stopping > 0),
        "early_stopping", p.early_stopping, "None or a positive integer (patience in epochs)",
    )
    _check(p.samples is None or (_is_int(p.samples) and p.samples > 0), "samples", p.samples, "a positive integer")
    _check(p.burn_in is None or (_is_int(p.burn_in) and p.burn_in >= 0), "burn_in", p.burn_in,
           "a non-negative integer")
    _check(p.thin is None or (_is_int(p.thin) and p.thin > 0), "thin", p.thin, "a positive integer")
    _check(p.implicit_features is None or isinstance(p.implicit_features, bool), "implicit_features",
           p.implicit_features, "True, False or None")
    if p.implicit_features and solvers.get_solver(p.loss, p.solver).name != "gibbs":
        raise ValueError("implicit_features=True needs solver='gibbs' (the only solver that samples them)")
    _check(_is_int(p.seed) and 0 <= p.seed <= _MAX_SEED, "seed", p.seed, "an integer from 0 to 2**63 - 1")
    _check(isinstance(p.verbose, bool), "verbose", p.verbose, "True or False")
    _check(isinstance(p.device, str), "device", p.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    if p.device != "auto":
        try:
            dev = torch.device(p.device)
        except (RuntimeError, TypeError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {p.device!r}")


def resolve(p: Params, profile: ValueProfile | None = None) -> dict[str, Any]:
    """Effective hyperparameters: the user's values with the solver's defaults for the loss filled in.

    Parameters
    ----------
    p : Params
    profile : ValueProfile, optional
        What the training values look like (:func:`torchmf.data.profile.value_profile`).
        A solver with a ``data_defaults(loss, profile, given)`` classmethod
        fills the parameters it returns from it first (iALS: the confidence
        transform and scale); without a profile (before fit) they are those
        of binary data.

    Returns
    -------
    dict
        Every ``Params`` field, none None.
    """
    out = {name: getattr(p, name) for name in Params.names()}
    cls = solvers.get_solver(p.loss, p.solver)
    out["solver"] = cls.name
    data_defaults = getattr(cls, "data_defaults", None)
    from_data = data_defaults(p.loss, profile, dict(out)) if data_defaults is not None else {}
    for name, default in {**_SHARED, **_NEUTRAL, **cls.defaults[p.loss], **from_data}.items():
        if out[name] is None:
            out[name] = default
    if out["rank_by"] is None:
        out["rank_by"] = "scores" if cls.ranking else "interactions"
    return out
