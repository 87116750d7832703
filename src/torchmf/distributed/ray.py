"""Train on a Ray cluster with Ray Train's ``TorchTrainer`` (``pip install 'torchmf[ray]'``).

Ray starts the workers and their ``torch.distributed`` process group (gloo on
CPUs, NCCL with ``use_gpu``); each worker runs the same
:func:`~torchmf.distributed.job.run_job` as torchrun's ranks. Rank 0 writes
the model folder, so on a multi-machine cluster ``output`` must be on storage
every node can reach (or the node of rank 0).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from torchmf.distributed.job import DEFAULT_TIMEOUT, JobConfig, run_job
from torchmf.errors import TrainingError

__all__ = ["fit"]


def _train_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs (module-level, so workers import it rather than unpickle code)."""
    run_job(JobConfig(**config))


def fit(estimator: Any, data_path: str | os.PathLike, num_workers: int = 2, output: str | os.PathLike | None = None,
        use_gpu: bool = False, storage_path: str | os.PathLike | None = None, **options: Any) -> Any:
    """Fit ``estimator``'s settings on ``data_path`` with ``num_workers`` Ray Train workers.

    Parameters
    ----------
    estimator : MatrixFactorization
        Supplies the hyperparameters; not modified.
    data_path : path-like
        A ratings file or a folder of part files, readable from every worker.
    num_workers : int
    output : path-like, optional
        Model folder (default: a temporary folder, removed after loading).
    use_gpu : bool
        One GPU per worker (NCCL).
    storage_path : path-like, optional
        Ray Train's run storage (default: a temporary folder).
    **options
        As :func:`torchmf.distributed.fit` (``timeout``, ``checkpoint_every``, reading options, ...).

    Returns
    -------
    MatrixFactorization
        Loaded from the folder rank 0 wrote.

    Raises
    ------
    TrainingError
        When the Ray job fails (the message holds the failing worker's error).
    """
    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as exc:
        raise ImportError("torchmf.distributed.ray needs Ray Train: pip install 'torchmf[ray]'") from exc
    from torchmf.distributed import make_config
    from torchmf.estimator.mf import MatrixFactorization

    with tempfile.TemporaryDirectory(prefix="torchmf-ray-") as tmp:
        target = os.path.join(tmp, "model") if output is None else os.path.abspath(output)
        cfg = make_config(estimator, os.path.abspath(data_path), target, **options)
        trainer = TorchTrainer(
            _train_loop, train_loop_config=cfg.to_dict(),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo",
                                     timeout_s=int(options.get("timeout", DEFAULT_TIMEOUT))),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=RunConfig(name="torchmf", storage_path=os.fspath(storage_path or os.path.join(tmp, "ray"))),
        )
        try:
            trainer.fit()
        except Exception as exc:  # Ray wraps the worker's exception in its own types
            text = " ".join(str(exc).split())[-500:]
            raise TrainingError(f"Ray Train job failed: {text}") from exc
        return MatrixFactorization.load(target, device="cpu")
