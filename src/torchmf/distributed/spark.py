"""Train from Spark with ``pyspark.ml.torch.distributor.TorchDistributor`` (``pip install 'torchmf[spark]'``).

The distributor starts the ranks (torchrun on the driver with
``local_mode=True``, else one barrier task per rank on the executors); each
runs the same :func:`~torchmf.distributed.job.run_job` as under torchrun, so
the input is a file or a folder of part files every rank can read (e.g. what
``df.write.csv(path)`` produced) and rank 0 writes the model folder (on
shared storage for a multi-machine cluster).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from torchmf.distributed.job import JobConfig, run_job
from torchmf.errors import TrainingError

__all__ = ["fit"]


def _train(config: dict[str, Any]) -> None:
    """What each rank runs (module-level, so it is imported rather than shipped as code)."""
    run_job(JobConfig(**config))


def fit(estimator: Any, data_path: str | os.PathLike, num_processes: int = 2,
        output: str | os.PathLike | None = None, local_mode: bool = False, use_gpu: bool = False,
        **options: Any) -> Any:
    """Fit ``estimator``'s settings on ``data_path`` with ``num_processes`` Spark-launched ranks.

    Uses the active SparkSession (start one first, e.g. ``SparkSession.builder.master("local[2]")``).

    Parameters
    ----------
    estimator : MatrixFactorization
    data_path : path-like
        A ratings file or a folder of part files, readable from every rank.
    num_processes : int
        Ranks (with ``local_mode=False``: barrier tasks; the cluster needs that many task slots).
    output : path-like, optional
        Model folder (default: a temporary folder, removed after loading).
    local_mode : bool
        Run the ranks on the driver instead of the executors.
    use_gpu : bool
    **options
        As :func:`torchmf.distributed.fit`.

    Returns
    -------
    MatrixFactorization
    """
    try:
        from pyspark.ml.torch.distributor import TorchDistributor
    except ImportError as exc:
        raise ImportError("torchmf.distributed.spark needs PySpark: pip install 'torchmf[spark]'") from exc
    from torchmf.distributed import make_config
    from torchmf.estimator.mf import MatrixFactorization

    with tempfile.TemporaryDirectory(prefix="torchmf-spark-") as tmp:
        target = os.path.join(tmp, "model") if output is None else os.path.abspath(output)
        cfg = make_config(estimator, os.path.abspath(data_path), target, **options)
        distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
        try:
            distributor.run(_train, cfg.to_dict())
        except Exception as exc:  # Spark reports a rank's failure as its own exception types
            text = " ".join(str(exc).split())[-500:]
            raise TrainingError(f"Spark TorchDistributor job failed: {text}") from exc
        return MatrixFactorization.load(target, device="cpu")
