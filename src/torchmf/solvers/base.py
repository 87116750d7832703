"""The solver seam: one protocol every training algorithm implements, and the registry.

A solver owns the maths of one family of objectives (ALS, iALS, SGD, ...):
it is built from the model, the compacted data, the resolved hyperparameters
and the device, runs one epoch at a time, and can solve one user's row with
the items fixed (fold-in). The epoch loop, validation and early stopping live
in :mod:`torchmf.training`, so a new solver is one file plus one
:func:`register` line in :mod:`torchmf.solvers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from torchmf.data.interactions import Interactions
    from torchmf.nn.mf import MFModel

__all__ = [
    "Solver", "default_solver", "get_solver", "is_ranking_loss", "load_solver_state", "losses", "register",
    "solver_names", "solver_state", "solvers_for",
]


@runtime_checkable
class Solver(Protocol):
    """One training algorithm for one or more losses.

    Class attributes
    ----------------
    name : str
        The ``solver=`` value that selects it ("als", "sgd", ...).
    losses : tuple of str
        The ``loss=`` values it trains.
    ranking : bool
        True when its losses learn a ranking of items (implicit feedback):
        scores are then not clipped to a rating range and models are validated
        by NDCG@10 instead of RMSE.
    defaults : dict of str to dict
        Per loss, the value of every hyperparameter the user left as None
        (every ``Params`` field that defaults to None must appear).

    Optional: a classmethod ``data_defaults(loss, profile, given) -> dict``
    returns defaults that depend on the training values (``profile`` a
    :class:`~torchmf.data.profile.ValueProfile`, or None before fit; ``given``
    the user's values); they take precedence over ``defaults`` for the
    parameters the user left as None (iALS: the confidence transform and scale).
    Optional: a class attribute ``search_space`` (what ``torchmf.autotune``
    searches) and a classmethod ``moot_for(profile) -> tuple of str``: names of
    that space that cannot change the model on values like these (iALS: the
    confidence transform when every value is equal), left out of the search.
    """

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]
    ranking: ClassVar[bool]
    defaults: ClassVar[dict[str, dict[str, Any]]]

    def __init__(self, model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> None:
        """Set up for training ``model`` (in place) on compacted ``data``."""

    def epoch(self) -> float:
        """Run one epoch (or sweep) and return the training loss."""

    def divergence_hint(self) -> str:
        """Which setting to change when the loss diverges, with its current value."""

    def finish(self) -> None:
        """Called once after the last epoch (and after the best epoch was restored)."""

    # Optional, for resumable training (torchmf.training.checkpoint): a solver that can be
    # checkpointed defines ``state_dict() -> dict[str, torch.Tensor]`` (its state beyond the
    # model's weights: an RNG, optimiser buffers, carried scores; empty for ALS, whose next
    # sweep depends only on the weights) and ``load_state_dict(state)``, so that a resumed fit
    # continues bit-identically on the CPU. Fits with other solvers refuse checkpoint_dir.

    @classmethod
    def fold_in(
        cls,
        model: MFModel,
        items: torch.Tensor,
        values: torch.Tensor,
        hp: dict[str, Any],
        item_counts: np.ndarray | None,
    ) -> torch.Tensor:
        """One user's row from their items with the item side fixed.

        Parameters
        ----------
        model : MFModel
        items : torch.LongTensor, shape (L,)
            Distinct item indices, on the model's device.
        values : torch.Tensor, shape (L,)
        hp : dict
            The model's effective hyperparameters.
        item_counts : numpy.ndarray of int64, shape (n_items,), optional
            Training interactions per item.

        Returns
        -------
        torch.Tensor, shape (d,) or (d + 1,) with the user bias last when the model has biases.
        """


# (loss, solver name) -> class; per loss the default solver name
_REGISTRY: dict[tuple[str, str], type[Solver]] = {}
_DEFAULT: dict[str, str] = {}


def register(cls: type[Solver], default_for: tuple[str, ...] = ()) -> type[Solver]:
    """Make ``cls`` trainable as ``MatrixFactorization(loss=L, solver=cls.name)`` for each of its losses.

    Parameters
    ----------
    cls : Solver class
    default_for : tuple of str
        Losses for which ``cls`` is the solver used when ``solver=None``. A
        loss's first registered solver is its default otherwise.

    Returns
    -------
    cls, so it can be used as a decorator.
    """
    for attr in ("name", "losses", "ranking", "defaults"):
        if not hasattr(cls, attr):
            raise TypeError(f"solver class {cls.__name__} lacks the class attribute {attr!r}")
    for loss in cls.losses:
        if loss not in cls.defaults:
            raise TypeError(f"solver class {cls.__name__} has no defaults for loss {loss!r}")
        if loss in losses() and is_ranking_loss(loss) != cls.ranking:
            raise TypeError(f"loss {loss!r} is already registered with ranking={is_ranking_loss(loss)}")
        _REGISTRY[(loss, cls.name)] = cls
        _DEFAULT.setdefault(loss, cls.name)
    for loss in default_for:
        if (loss, cls.name) not in _REGISTRY:
            raise TypeError(f"solver {cls.name!r} cannot be the default for loss {loss!r}: it does not train it")
        _DEFAULT[loss] = cls.name
    return cls


def losses() -> tuple[str, ...]:
    """Every registered loss, in registration order."""
    return tuple(_DEFAULT)


def solver_names() -> tuple[str, ...]:
    """Every registered solver name."""
    return tuple(dict.fromkeys(name for _, name in _REGISTRY))


def solvers_for(loss: str) -> tuple[str, ...]:
    """Solver names that can train ``loss``, the default first."""
    others = [name for (lo, name) in _REGISTRY if lo == loss and name != _DEFAULT.get(loss)]
    return ((_DEFAULT[loss],) if loss in _DEFAULT else ()) + tuple(others)


def default_solver(loss: str) -> str:
    """The solver used for ``loss`` when ``solver=None``."""
    return _DEFAULT[loss]


def get_solver(loss: str, solver: str | None = None) -> type[Solver]:
    """The class registered for (loss, solver); ``solver=None`` is the loss's default.

    Raises
    ------
    ValueError
        For an unknown loss or a pair nobody registered, naming the valid choices.
    """
    if loss not in _DEFAULT:
        raise ValueError(f"loss must be one of {losses()}, got {loss!r}")
    name = _DEFAULT[loss] if solver is None else solver
    try:
        return _REGISTRY[(loss, name)]
    except KeyError:
        allowed = " or ".join(repr(s) for s in solvers_for(loss))
        raise ValueError(f"loss={loss!r} cannot be trained with solver={solver!r}; use solver={allowed}") from None


def is_ranking_loss(loss: str) -> bool:
    """True when ``loss`` learns a ranking (implicit feedback) rather than ratings."""
    for (lo, _), cls in _REGISTRY.items():
        if lo == loss:
            return bool(cls.ranking)
    raise ValueError(f"loss must be one of {losses()}, got {loss!r}")


def solver_state(solver: Solver) -> dict[str, torch.Tensor]:
    """The solver's state beyond the model's weights, for checkpoints.

    Raises
    ------
    ValueError
        When the solver does not support checkpoints (defines no ``state_dict``).
    """
    get = getattr(solver, "state_dict", None)
    if get is None or not hasattr(solver, "load_state_dict"):
        raise ValueError(f"solver {type(solver).name!r} does not support checkpoints "
                         "(it defines no state_dict/load_state_dict); fit without checkpoint_dir")
    return dict(get())


def load_solver_state(solver: Solver, state: dict[str, torch.Tensor]) -> None:
    """Put back :func:`solver_state`'s result (ValueError for solvers without checkpoint support)."""
    solver_state(solver)  # the same check
    solver.load_state_dict(state)  # type: ignore[attr-defined]
