"""Training across processes and machines on ``torch.distributed``.

:func:`fit` trains an estimator's settings on a ratings file or a folder of
part files with ``world_size`` local ranks (or, called inside a process that
torchrun started, with torchrun's world) and returns the fitted estimator,
loaded from the model folder rank 0 wrote. ALS and iALS give the same factors
as one process (up to floating-point reassociation); SGD runs stratified DSGD.
See :mod:`torchmf.distributed.job` for what each rank does and
:mod:`torchmf.distributed.ray` / :mod:`torchmf.distributed.spark` for cluster
launchers.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from typing import Any

from torchmf.distributed.io import ReadOptions
from torchmf.distributed.job import DEFAULT_TIMEOUT, JobConfig, run_job, under_launcher
from torchmf.distributed.launch import spawn

__all__ = ["JobConfig", "fit", "make_config"]


def make_config(estimator: Any, data_path: str | os.PathLike, output: str | os.PathLike, *,
                overwrite: bool = False, timeout: float = DEFAULT_TIMEOUT, checkpoint_every: int | None = None,
                checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, exchange: str = "auto",
                **read: Any) -> JobConfig:
    """A :class:`JobConfig` from an estimator's parameters and the reading options."""
    known = {f.name for f in fields(ReadOptions)}
    unknown = sorted(set(read) - known)
    if unknown:
        raise TypeError(f"unknown reading option {unknown[0]!r}; valid: {sorted(known)}")
    return JobConfig(data=os.fspath(data_path), output=os.fspath(output), params=estimator.get_params(), read=read,
                     overwrite=overwrite, timeout=timeout, checkpoint_every=checkpoint_every,
                     checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir), resume=resume,
                     exchange=exchange)


def fit(estimator: Any, data_path: str | os.PathLike, world_size: int | None = None,
        output: str | os.PathLike | None = None, **options: Any) -> Any:
    """Fit ``estimator``'s settings on ``data_path`` across ``world_size`` processes.

    Parameters
    ----------
    estimator : MatrixFactorization
        Supplies the hyperparameters (``get_params()``); it is not modified.
    data_path : path-like
        A ratings file, or a folder of part files (CSV/TSV/Parquet).
    world_size : int, optional
        Local ranks to start (default 1). Ignored under torchrun, whose world is used.
    output : path-like, optional
        Model folder to write (default: a temporary folder, removed after loading).
    **options
        ``overwrite``, ``timeout`` (collective timeout, seconds),
        ``checkpoint_every``, ``checkpoint_dir``, ``resume``, ``exchange``
        ("auto", "all_gather" or "all_to_all": how ALS/iALS ranks get the
        other side's factors, see :mod:`torchmf.distributed.rows`), and the reading
        options of :func:`torchmf.read_ratings` (``sep``, ``columns``,
        ``header``, ``user_col``, ``item_col``, ``rating_col``,
        ``timestamp_col``, ``implicit``, ``duplicates``).

    Returns
    -------
    MatrixFactorization or None
        The fitted model, loaded from the folder rank 0 wrote (on the CPU).
        Under torchrun only rank 0 returns it (the folder is on its machine);
        the other ranks return None.
    """
    from torchmf.estimator.mf import MatrixFactorization

    with tempfile.TemporaryDirectory(prefix="torchmf-fit-") as tmp:
        target = os.path.join(tmp, "model") if output is None else os.fspath(output)
        cfg = make_config(estimator, data_path, target, **options)
        if under_launcher():
            run_job(cfg)  # this process is one of torchrun's ranks
            if int(os.environ["RANK"]) != 0:
                return None
        elif world_size in (None, 1):
            run_job(cfg)  # the whole job, in this process
        else:
            spawn(cfg, world_size)
        return MatrixFactorization.load(target, device="cpu")
