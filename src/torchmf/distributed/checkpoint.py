"""Resumable checkpoints of a distributed fit: one safetensors shard per rank plus a manifest.

``DIR/epoch-000004/rank-00001.safetensors`` holds rank 1's user rows and item
rows after epoch 4; ``DIR/epoch-000004/manifest.json``, written by rank 0
after every rank has written its shard, marks the checkpoint complete and
records the row ranges, the history and the settings it belongs to. Resuming
reads the latest complete checkpoint; every rank reads every shard, so a job
may resume with another world size. Older checkpoints are deleted once a
newer one is complete (the last two are kept).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from torchmf.distributed import comm
from torchmf.errors import ModelFileError

__all__ = ["latest", "load_checkpoint", "save_checkpoint"]

MANIFEST = "manifest.json"
_KEEP = 2
# settings that must match for a checkpoint to be resumed
_FINGERPRINT = ("loss", "solver", "factors", "biases", "seed", "reg", "reg_bias", "reg_exponent", "lr", "optimizer",
                "alpha", "unobserved_weight", "cg_steps", "confidence", "confidence_eps", "negatives",
                "negative_sampling")


def _fingerprint(hp: dict[str, Any], n_users: int, n_items: int) -> dict[str, Any]:
    return {"n_users": n_users, "n_items": n_items, **{k: hp.get(k) for k in _FINGERPRINT}}


def save_checkpoint(folder: str | os.PathLike, epoch: int, tables: dict[str, torch.Tensor], bounds: dict[str, Any],
                    history: list[dict[str, float]], hp: dict[str, Any], local: bool = False) -> None:
    """Write this rank's rows of ``tables`` after ``epoch`` (collective).

    Parameters
    ----------
    tables : dict of str -> torch.Tensor
        Full-size tables, keys P, Q (and bu, bi), current in this rank's rows;
        with ``local``, only this rank's rows (its user block of P and bu, its
        item block of Q and bi).
    bounds : dict
        ``{"P": user_bounds, "Q": item_bounds}`` (arrays of shape (world + 1,)).
    """
    r = comm.rank()
    target = Path(folder) / f"epoch-{epoch:06d}"

    def write() -> None:
        target.mkdir(parents=True, exist_ok=True)
        mine = {}
        for name, t in tables.items():
            b = bounds["P" if name in ("P", "bu") else "Q"]
            mine[name] = (t if local else t[int(b[r]):int(b[r + 1])]).detach().to("cpu").contiguous()
        tmp = target / f".rank-{r:05d}.tmp"
        save_file(mine, str(tmp))
        os.replace(tmp, target / f"rank-{r:05d}.safetensors")

    comm.agree(write, "writing a checkpoint")
    if r == 0:
        n_users, n_items = int(bounds["P"][-1]), int(bounds["Q"][-1])
        manifest = {
            "epoch": epoch, "world_size": comm.world(),
            "bounds": {k: [int(x) for x in v] for k, v in bounds.items()},
            "history": history, "fingerprint": _fingerprint(hp, n_users, n_items),
        }
        tmp = target / ".manifest.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, target / MANIFEST)
        done = sorted(p for p in Path(folder).glob("epoch-*") if (p / MANIFEST).exists())
        for old in done[:-_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    comm.all_sum([0])  # barrier: the manifest exists before anyone moves on


def latest(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``folder`` (None when there is none)."""
    p = Path(folder)
    if not p.is_dir():
        return None
    done = sorted(c for c in p.glob("epoch-*") if (c / MANIFEST).exists())
    return done[-1] if done else None


def load_checkpoint(folder: str | os.PathLike, tables: dict[str, torch.Tensor], hp: dict[str, Any]
                    ) -> tuple[int, list[dict[str, float]]] | None:
    """Fill ``tables`` (full size) from the latest complete checkpoint; returns (epoch, history) or None."""
    ckpt = latest(folder)
    if ckpt is None:
        return None
    manifest = json.loads((ckpt / MANIFEST).read_text())
    want = _fingerprint(hp, tables["P"].shape[0], tables["Q"].shape[0])
    diff = [k for k in want if manifest["fingerprint"].get(k) != want[k]]
    if diff:
        raise ModelFileError(f"{ckpt}: checkpoint was written with other settings or data "
                             f"({diff[0]}={manifest['fingerprint'].get(diff[0])!r}, now {want[diff[0]]!r})")
    for r in range(manifest["world_size"]):
        path = ckpt / f"rank-{r:05d}.safetensors"
        if not path.exists():
            raise ModelFileError(f"{path}: missing shard of a complete checkpoint")
        shard = load_file(str(path))
        for name, t in tables.items():
            b = manifest["bounds"]["P" if name in ("P", "bu") else "Q"]
            t[b[r]:b[r + 1]] = shard[name].to(t.device, t.dtype)
    return int(manifest["epoch"]), list(manifest["history"])
