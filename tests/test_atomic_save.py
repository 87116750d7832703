"""Saves are atomic: a save killed (SIGKILL) after any of its steps, or failing at any system call,
leaves a folder that loads as the old or the new model; the next save cleans up."""

from __future__ import annotations

import errno
import os
import signal

import numpy as np
import pytest

import torchmf
from torchmf import MatrixFactorization, ModelFileError
from torchmf.estimator import model_files

META = "torchmf.json"


@pytest.fixture(scope="module")
def models():
    data, _ = torchmf.datasets.synthetic(n_users=30, n_items=20, n_interactions=300, rank=2, seed=2)
    old = MatrixFactorization(factors=3, epochs=2, seed=0, device="cpu", verbose=False).fit(data)
    new = MatrixFactorization(factors=3, epochs=2, seed=1, device="cpu", verbose=False).fit(data)
    return old, new


def which(folder, old, new) -> str:
    """'old' or 'new': the model the folder loads as (fails on anything else)."""
    got = torchmf.load(folder, device="cpu").item_factors
    for name, m in (("old", old), ("new", new)):
        if np.array_equal(got, m.item_factors):
            return name
    raise AssertionError("the folder loads as neither the old nor the new model")


def save_steps(model, folder) -> list[str]:
    steps: list[str] = []
    model_files._step_hook = steps.append
    try:
        model.save(folder)
    finally:
        model_files._step_hook = None
    return steps


def killed_save(model, folder, step: str) -> None:
    """Run ``model.save(folder)`` in a forked child that SIGKILLs itself right after ``step``."""

    def die(s: str) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            model_files._step_hook = die
            model.save(folder)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"save did not reach step {step}"


def test_kill_after_every_step(models, tmp_path):
    old, new = models
    folder = tmp_path / "m"
    old.save(folder)
    (folder / "notes.txt").write_text("mine")
    steps = save_steps(new, folder)  # the steps of saving new over old, removals included
    old.save(folder)
    assert any(s.startswith("removed-weights-") for s in steps)
    assert "manifest-renamed" in steps and steps[-1] == "cleaned"
    commit = steps.index("manifest-renamed")
    for at, step in enumerate(steps):
        killed_save(new, folder, step)
        # before the manifest's rename the folder is the old model, from it on the new one
        assert which(folder, old, new) == ("old" if at < commit else "new"), step
        assert (folder / "notes.txt").read_text() == "mine"
        old.save(folder)  # the next save cleans up whatever the killed one left
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([META, "notes.txt", next(folder.glob("weights-*")).name]), (step, names)
        assert which(folder, old, new) == "old"


def test_kill_during_first_save_into_a_new_folder(models, tmp_path):
    old, new = models
    folder = tmp_path / "fresh"
    killed_save(new, folder, "weights-renamed")
    with pytest.raises(ModelFileError):  # nothing committed yet: no model, but no half model either
        torchmf.load(folder)
    old.save(folder)  # the folder only holds torchmf leftovers: no overwrite needed, leftovers removed
    assert len(list(folder.iterdir())) == 2 and which(folder, old, new) == "old"


@pytest.mark.parametrize("call", ["write", "fsync", "replace"])
def test_failing_system_call_at_every_point(models, tmp_path, monkeypatch, call):
    """Disk full (write), I/O error (fsync) or permission error (replace) at each call of a save."""
    old, new = models
    folder = tmp_path / "m"
    old.save(folder)
    real = getattr(os, call)
    counter = {"n": 0}

    def count(*args, **kwargs):
        counter["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, count)
    new.save(folder)  # counts the calls of a save over an existing model
    monkeypatch.setattr(os, call, real)
    old.save(folder)
    total, counter["n"] = counter["n"], 0
    assert total > 0
    err = {"write": errno.ENOSPC, "fsync": errno.EIO, "replace": errno.EACCES}[call]
    for fail_at in range(1, total + 1):
        def failing(*args, fail_at=fail_at, **kwargs):
            counter["n"] += 1
            if counter["n"] == fail_at:
                raise OSError(err, os.strerror(err))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, call, failing)
        counter["n"] = 0
        with pytest.raises(ModelFileError, match=rf"^{folder}: cannot save the model there \({os.strerror(err)}\)"):
            new.save(folder)
        monkeypatch.setattr(os, call, real)
        assert which(folder, old, new) in ("old", "new")
        assert not list(folder.glob(".torchmf-tmp-*"))  # a failed (not killed) save removes its temp file
        old.save(folder)


def test_concurrent_saves_and_loads(models, tmp_path):
    """Two processes saving into one folder while this one loads it: every load is one of the models."""
    old, new = models
    folder = tmp_path / "m"
    old.save(folder)
    pids = []
    for model in (old, new):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for _ in range(6):
                    model.save(folder)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    seen = set()
    for _ in range(40):  # bounded: a few dozen loads while the writers run
        seen.add(which(folder, old, new))
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert seen <= {"old", "new"}
    assert len(list(folder.iterdir())) == 2  # no leftovers once both finished


def test_leftovers_of_killed_version_1_saves_are_removed(models, tmp_path):
    old, new = models
    folder = tmp_path / "m"
    old.save(folder)
    v1 = ("torchmf.json", "model.safetensors")
    tmp_dir, aside = tmp_path / ".m.ab12_x9z", tmp_path / ".m.old.q1w2e3r4"
    (aside / "m").mkdir(parents=True)
    tmp_dir.mkdir()
    for name in v1:
        (tmp_dir / name).write_text("partial")
        (aside / "m" / name).write_text("old model")
    keep = tmp_path / ".m.zzzzzzzz"  # the right name, but holding a file torchmf never writes: kept
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (tmp_path / ".other.abcdefgh").mkdir()  # another folder's name: kept
    new.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.zzzzzzzz", ".other.abcdefgh", "m"]
    assert (keep / "notes.txt").read_text() == "mine"


def test_waiting_for_another_save_is_bounded(models, tmp_path):
    old, _ = models
    folder = tmp_path / "m"
    old.save(folder)
    with model_files.locked(folder):  # another save holds the folder
        with pytest.raises(ModelFileError, match="another save into this folder"), \
                model_files.locked(folder, timeout=0.2):
            pass
    old.save(folder)  # released
