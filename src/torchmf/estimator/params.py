"""Hyperparameters of :class:`~torchmf.MatrixFactorization`: defaults and validation.

Some defaults depend on the solver (an ALS sweep is not an SGD epoch), so a
parameter left as ``None`` means "the solver's default", resolved at fit time
by :func:`resolve`. ``get_params()`` returns what the user set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from torchmf.solvers.optim import OPTIMIZERS

__all__ = ["Params", "SOLVERS", "LOSSES", "resolve", "validate"]

SOLVERS = ("als", "sgd")
EXPLICIT_LOSSES = ("mse",)
LOSSES = EXPLICIT_LOSSES

# Defaults chosen on ML-100k's five canonical folds (benchmarks/explicit.py;
# results in benchmarks/RESULTS.md): they trade a little accuracy for a fit
# time no slower than Surprise's SVD.
_SOLVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "als": {"epochs": 6, "reg": 0.45, "reg_bias": 0.2, "reg_exponent": 0.75, "lr": 0.0},
    "sgd": {"epochs": 40, "reg": 0.05, "reg_bias": 0.01, "reg_exponent": 1.0, "lr": 0.01},
}


@dataclass
class Params:
    """Every hyperparameter, as the user gave it (None = solver default).

    Attributes mirror :class:`~torchmf.MatrixFactorization`'s arguments.
    """

    factors: int = 48
    epochs: int | None = None
    solver: str = "als"
    loss: str = "mse"
    lr: float | None = None
    reg: float | None = None
    reg_bias: float | None = None
    reg_exponent: float | None = None
    optimizer: str = "sgd"
    batch_size: int = 16384
    biases: bool = True
    init_std: float = 0.1
    cg_steps: int = 3
    early_stopping: int | None = None
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
    """Raise ``ValueError`` naming the first invalid hyperparameter."""
    _check(_is_int(p.factors) and p.factors > 0, "factors", p.factors, "a positive integer")
    _check(p.epochs is None or (_is_int(p.epochs) and p.epochs > 0), "epochs", p.epochs, "a positive integer")
    _check(p.solver in SOLVERS, "solver", p.solver, f"one of {SOLVERS}")
    _check(p.loss in LOSSES, "loss", p.loss, f"one of {LOSSES}")
    _check(p.lr is None or (_is_num(p.lr) and p.lr > 0), "lr", p.lr, "a positive number")
    for name in ("reg", "reg_bias", "reg_exponent"):
        v = getattr(p, name)
        _check(v is None or (_is_num(v) and v >= 0), name, v, "a non-negative number")
    _check(p.optimizer in OPTIMIZERS, "optimizer", p.optimizer, f"one of {sorted(OPTIMIZERS)}")
    _check(_is_int(p.batch_size) and p.batch_size > 0, "batch_size", p.batch_size, "a positive integer")
    _check(isinstance(p.biases, bool), "biases", p.biases, "True or False")
    _check(_is_num(p.init_std) and p.init_std > 0, "init_std", p.init_std, "a positive number")
    _check(_is_int(p.cg_steps) and p.cg_steps >= 0, "cg_steps", p.cg_steps, "a non-negative integer")
    _check(
        p.early_stopping is None or (_is_int(p.early_stopping) and p.early_stopping > 0),
        "early_stopping", p.early_stopping, "None or a positive integer (patience in epochs)",
    )
    _check(_is_int(p.seed), "seed", p.seed, "an integer")
    _check(isinstance(p.verbose, bool), "verbose", p.verbose, "True or False")
    _check(isinstance(p.device, str), "device", p.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    if p.device != "auto":
        try:
            torch.device(p.device)
        except RuntimeError:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {p.device!r}") from None


def resolve(p: Params) -> dict[str, Any]:
    """Effective hyperparameters: the user's values with solver defaults filled in."""
    out = {name: getattr(p, name) for name in Params.names()}
    for name, default in _SOLVER_DEFAULTS[p.solver].items():
        if out[name] is None:
            out[name] = default
    return out


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='auto' or 'cpu'")
    return dev
