"""Training algorithms behind one :class:`Solver` protocol, and the registry that names them.

Adding a solver is one new file with a class that satisfies
:class:`~torchmf.solvers.base.Solver` plus one :func:`register` line here.
"""

from torchmf.solvers.als_solver import ALSSolver
from torchmf.solvers.base import (
    Solver,
    default_solver,
    get_solver,
    is_ranking_loss,
    losses,
    register,
    solver_names,
    solvers_for,
)
from torchmf.solvers.gibbs_solver import GibbsSolver
from torchmf.solvers.ials_solver import IALSSolver
from torchmf.solvers.pairwise_solver import PairwiseSolver
from torchmf.solvers.sgd_solver import SGDSolver

__all__ = [
    "Solver", "default_solver", "get_solver", "is_ranking_loss", "losses", "register", "solver_names", "solvers_for",
]

# The registry: (loss, solver) pairs; a loss's first solver is its default.
register(ALSSolver, default_for=("mse",))
register(SGDSolver)
register(IALSSolver, default_for=("ials",))
register(PairwiseSolver, default_for=("bpr", "logistic", "warp"))
register(GibbsSolver)
