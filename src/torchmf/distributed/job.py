"""What every rank runs: read its shard, train, checkpoint, and (rank 0) save the model folder.

:func:`run_job` is the same code under ``torchrun``, under the local launcher
(:mod:`torchmf.distributed.launch`), under Ray and under Spark: the world comes
from the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), the job from a :class:`JobConfig`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from torchmf.data.csr import csr_order
from torchmf.device import resolve_device
from torchmf.distributed import comm
from torchmf.distributed.als import Tables, make_als_sweep, make_ials_sweep, own_blocks
from torchmf.distributed.checkpoint import load_checkpoint, save_checkpoint
from torchmf.distributed.io import ReadOptions, Shard, load_shard
from torchmf.distributed.rows import EXCHANGES, choose_exchange
from torchmf.distributed.sgd import DSGD, PairwiseSGD
from torchmf.errors import ModelFileError
from torchmf.estimator import params as hparams
from torchmf.estimator.persistence import save_state
from torchmf.estimator.state import ModelState
from torchmf.nn.mf import MFModel
from torchmf.solvers.sgd import model_tables
from torchmf.solvers.sgd_solver import auto_batch_size
from torchmf.training.loop import new_model
from torchmf.training.monitor import Monitor

__all__ = ["ERRORS_ENV", "JobConfig", "init_world", "run_job", "under_launcher"]

log = logging.getLogger(__name__)

# seconds a collective waits for the slowest rank before failing the job
DEFAULT_TIMEOUT = 50.0
# test hook: "RANK:EPOCH:exit|hang" makes that rank crash or hang at the start of that epoch
FAULT_ENV = "TORCHMF_DIST_FAULT"
# folder where a failing rank started by the local launcher leaves its one-line report
ERRORS_ENV = "TORCHMF_DIST_ERRORS"


@dataclass
class JobConfig:
    """A distributed fit, as plain JSON-able fields.

    Attributes
    ----------
    data : str
        A ratings file or a folder of part files.
    output : str
        Model folder rank 0 writes.
    params : dict
        Estimator hyperparameters as given (``MatrixFactorization.get_params()``).
    read : dict
        :class:`~torchmf.distributed.io.ReadOptions` fields.
    overwrite : bool
    timeout : float
        Collective timeout in seconds.
    checkpoint_every : int, optional
        Write a checkpoint every this many epochs.
    checkpoint_dir : str, optional
        Where checkpoints go (default: ``output + ".ckpt"``).
    resume : bool
        Continue from the latest complete checkpoint, if any.
    exchange : {"auto", "all_gather", "all_to_all"}
        How ALS/iALS ranks get the other side's factors each half-sweep
        (:func:`~torchmf.distributed.rows.choose_exchange`); SGD ignores it.
    """

    data: str
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    read: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    timeout: float = DEFAULT_TIMEOUT
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    exchange: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def under_launcher() -> bool:
    """True inside a process started by torchrun (or any launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_world(timeout: float, device: torch.device) -> bool:
    """Join the process group the environment describes; False when there is none (one process)."""
    if dist.is_initialized():
        return False
    if not under_launcher() or (int(os.environ["WORLD_SIZE"]) == 1 and "MASTER_ADDR" not in os.environ):
        return False
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return True


def _check(hp: dict[str, Any], cfg: JobConfig) -> None:
    if hp["early_stopping"] is not None:
        raise ValueError("early_stopping needs a validation set, which the distributed fit does not take")
    if cfg.checkpoint_every is not None and (not isinstance(cfg.checkpoint_every, int) or cfg.checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {cfg.checkpoint_every!r}")
    if not (isinstance(cfg.timeout, (int, float)) and cfg.timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {cfg.timeout!r}")
    if cfg.exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(EXCHANGES)}; got {cfg.exchange!r}")


def _fault(epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    r, e, kind = spec.split(":")
    if int(r) == comm.rank() and int(e) == epoch:
        log.warning("fault injection: rank %s %s at epoch %d", r, kind, epoch)
        if kind == "exit":
            os._exit(17)
        time.sleep(3600)


@dataclass
class _Sizes:
    """What :func:`~torchmf.training.loop.new_model` reads of the data: sizes, and values for the global mean."""

    n_users: int
    n_items: int
    values: np.ndarray


def _init_model(shard: Shard, hp: dict[str, Any], device: torch.device) -> MFModel:
    """The single-process initialisation: full tables drawn from the seeded CPU generator, used block by block."""
    mean = np.array([shard.value_sum / shard.n_total])
    return new_model(_Sizes(shard.n_users, shard.n_items, mean), hp, device)  # type: ignore[arg-type]


def run_job(cfg: JobConfig) -> None:
    """Run one rank of the job (collective: every rank calls it with the same config)."""
    hp = hparams.resolve(hparams.Params(**cfg.params))
    _check(hp, cfg)
    device = resolve_device(hp["device"])
    owns_world = init_world(cfg.timeout, device)
    try:
        _run(cfg, hp, device)
    finally:
        if owns_world:
            dist.destroy_process_group()


def _run(cfg: JobConfig, hp: dict[str, Any], device: torch.device) -> None:
    t0 = time.perf_counter()
    rss0 = _rss_mib()
    comm.agree(lambda: _check_output(cfg) if comm.rank() == 0 else None, "checking the output folder")
    shard = load_shard(cfg.data, ReadOptions(**cfg.read))
    _release_free_memory()  # what reading and the exchanges freed must not sit under the layouts' peak
    log.info("rank %d: %d + %d interactions by user + item block (%.1f s, RSS %.0f MiB, peak %.0f)", comm.rank(),
             len(shard.by_user[0]), len(shard.by_item[0]), time.perf_counter() - t0, _rss_mib(), _peak_rss_mib())
    if hp["batch_size"] is None:
        hp["batch_size"] = auto_batch_size(hp["loss"], shard.n_total)
    model = _init_model(shard, hp, device)
    t = model_tables(model)
    full = {k: (model.user_bias.weight.data if k == "bu" else model.item_bias.weight.data if k == "bi" else v)
            for k, v in t.items()}
    bounds = {"P": shard.user_bounds, "Q": shard.item_bounds}
    ckpt_dir = cfg.checkpoint_dir or f"{cfg.output}.ckpt"
    start, history = 1, []
    if cfg.resume:
        got = comm.agree(lambda: load_checkpoint(ckpt_dir, full, hp), "reading the checkpoint")
        if got is not None:
            start, history = got[0] + 1, got[1]
            log.info("resuming after epoch %d from %s", got[0], ckpt_dir)
    sgd = hp["solver"] == "sgd"
    exchange = "all_gather" if sgd else choose_exchange(cfg.exchange, shard.n_users, shard.n_items,
                                                         hp["factors"] + int(hp["biases"]))
    if exchange == "all_to_all":  # no full table on any rank while training: each keeps its blocks
        t = own_blocks(t, shard)
        full = {k: v if v.dim() == 2 else v.unsqueeze(1) for k, v in t.items()}  # the checkpoints' shapes
        for p in _table_params(model).values():
            p.data = p.data.new_empty((0, p.shape[1]))
    # the seen index (8 bytes a pair) before the sweeps release the rows (40 bytes a pair at W > 1)
    seen_local = None if sgd else _local_seen(shard)
    if hp["loss"] == "ials":
        sweep = make_ials_sweep(shard, t, hp, device, exchange)
    elif hp["solver"] == "als":
        sweep = make_als_sweep(shard, t, hp, float(model.global_bias) if hp["biases"] else 0.0, device, exchange)
    elif hp["loss"] == "mse":
        dsgd = DSGD(shard, model, hp, device)
    else:
        dsgd = PairwiseSGD(shard, model, hp, device)
    _release_free_memory()
    log.info("rank %d: laid out (RSS %.0f MiB, peak %.0f)", comm.rank(), _rss_mib(), _peak_rss_mib())
    monitor = Monitor(
        hp["epochs"], snapshot=lambda: None, restore=lambda state: None,
        divergence_hint=f"lower lr (now {hp['lr']}) or raise reg (now {hp['reg']})" if sgd
        else f"raise reg (now {hp['reg']})",
        verbose=hp["verbose"] and comm.rank() == 0, desc=f"torchmf {hp['loss']}/{hp['solver']} x{comm.world()}",
    )
    monitor.history = history  # the same list: it grows by one row per epoch run here
    sent_before, epochs_before = comm.stats.sent, len(history)
    with torch.no_grad():
        for epoch in range(start, hp["epochs"] + 1):
            _fault(epoch)
            loss = dsgd.epoch(epoch) if sgd else sweep()
            monitor.end_epoch(epoch, loss)
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < hp["epochs"]:
                if sgd:
                    dsgd.gather()
                save_checkpoint(ckpt_dir, epoch, full, bounds, monitor.history, hp, local=exchange == "all_to_all")
    monitor.finish()
    log.info("rank %d: trained (RSS %.0f MiB, peak %.0f)", comm.rank(), _rss_mib(), _peak_rss_mib())
    sweeps = max(1, len(monitor.history) - epochs_before)
    per_sweep = (comm.stats.sent - sent_before) // sweeps
    if sgd:
        dsgd.gather()
    elif exchange == "all_to_all":  # rank 0 needs the whole tables for the model folder
        _collect_tables(model, t, shard)
    # the layouts (held by the sweep) and any rows left (SGD's) are no longer needed: free them before
    # rank 0 gathers the seen index and serialises the model, the other peak of a fit
    sweep = dsgd = None
    if seen_local is None:
        seen_local = _local_seen(shard)
    shard.by_user = shard.by_item = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    _release_free_memory()
    seen = _gather_seen(shard, seen_local)
    del seen_local
    log.info("rank %d: seen index gathered (RSS %.0f MiB, peak %.0f)", comm.rank(), _rss_mib(), _peak_rss_mib())
    # nobody returns before the model folder exists (or rank 0's error is everyone's)
    comm.agree(lambda: _save(cfg, hp, shard, model, monitor.history, seen) if comm.rank() == 0 else None,
               "saving the model")
    log.info("rank %d: done in %.1f s; sent %d bytes, %d per epoch; peak RSS %.1f MiB, %.1f MiB at start",
             comm.rank(), time.perf_counter() - t0, comm.stats.sent, per_sweep, _peak_rss_mib(), rss0)


def _peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM on Linux (reset at exec, unlike ru_maxrss), else ru_maxrss."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    """This process's resident memory now (Linux; NaN elsewhere)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _check_output(cfg: JobConfig) -> None:
    if os.path.exists(cfg.output) and not cfg.overwrite:
        raise ModelFileError(f"{cfg.output}: exists; pass overwrite=True (CLI: --overwrite) to replace it")


def _local_seen(shard: Shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's users' seen items as CSR: indptr (block-local rows), items (int32 while they fit), values."""
    lo, hi = shard.users_of(comm.rank())
    users, items, values = shard.by_user
    indptr, order = csr_order(users - lo, items, hi - lo, shard.n_items)
    index = np.int32 if shard.n_items < 2**31 else np.int64
    return indptr, items.astype(index)[order], np.asarray(values, dtype=np.float32)[order]


def _gather_seen(shard: Shard, local: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The seen-items CSR (indptr, items, values) of all users on rank 0 (None elsewhere), rank blocks in order."""
    indptr, items, values = local
    if comm.world() == 1:
        return indptr, items.astype(np.int64), values
    all_counts = comm.all_gather_rows(torch.from_numpy(np.diff(indptr)))
    all_indices = _gather_to_root(torch.from_numpy(items.astype(np.int64)))  # the model file's dtype
    all_values = _gather_to_root(torch.from_numpy(values))
    if comm.rank() != 0:
        return None
    indptr = np.concatenate([[0], np.cumsum(torch.cat(all_counts).numpy())]).astype(np.int64)
    return indptr, all_indices.numpy(), all_values.numpy()  # type: ignore[union-attr]


def _gather_to_root(t: torch.Tensor) -> torch.Tensor | None:
    """Variable-length 1-D tensors concatenated in rank order on rank 0 (None elsewhere), received in place."""
    sizes = [int(x) for x in comm.all_gather_rows(torch.tensor([t.numel()]))]
    if comm.rank() != 0:
        if t.numel():
            comm.stats.add(t.numel() * t.element_size())
            dist.send(t.contiguous(), dst=0)
        return None
    out = t.new_empty(sum(sizes))
    out[: sizes[0]] = t
    del t
    start = sizes[0]
    for r in range(1, comm.world()):
        if sizes[r]:
            dist.recv(out[start:start + sizes[r]], src=r)
        start += sizes[r]
    return out


def _table_params(model: MFModel) -> dict[str, torch.nn.Parameter]:
    """The model's tables as parameters, keyed as :func:`~torchmf.solvers.sgd.model_tables` keys them."""
    params = {"P": model.user_embs.weight, "Q": model.item_embs.weight}
    if model.biases:
        params.update(bu=model.user_bias.weight, bi=model.item_bias.weight)
    return params


def _collect_tables(model: MFModel, blocks: Tables, shard: Shard) -> None:
    """Rank 0's model gets the whole tables from every rank's blocks (the all_to_all design keeps no full table)."""
    params = _table_params(model)
    for name, block in blocks.items():
        whole = _gather_to_root(block.reshape(-1))
        if whole is not None:
            n = shard.n_users if name in ("P", "bu") else shard.n_items
            params[name].data = whole.view(n, -1)


def _release_free_memory() -> None:
    """Hand memory freed so far back to the OS: the C heap (glibc ``malloc_trim``) and Arrow's pool, if loaded.

    Reading Parquet and the row exchanges free large buffers that the
    allocators otherwise keep, so they would count under every later peak.
    """
    arrow = sys.modules.get("pyarrow")
    with contextlib.suppress(AttributeError):  # pyarrow < 9 has no release_unused
        if arrow is not None:
            arrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc (macOS, Windows)
        ctypes.CDLL(None).malloc_trim(0)


def _save(cfg: JobConfig, hp: dict[str, Any], shard: Shard, model: MFModel, history: list[dict[str, float]],
          seen: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Rank 0: the usual model folder (the single-process format; loading needs no distributed setup)."""
    state = ModelState(
        params=dict(cfg.params), effective_params=hp, tensors=dict(model.to("cpu").state_dict()),
        user_map=shard.user_map, item_map=shard.item_map, seen_indptr=seen[0], seen_indices=seen[1],
        seen_values=seen[2],
        rating_range=shard.rating_range, implicit=shard.implicit, history=history, best_epoch=None,
        extras={"distributed": {"world_size": comm.world()}},
    )
    save_state(state, cfg.output, overwrite=cfg.overwrite)
