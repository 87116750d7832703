"""Model lifecycle: resumable training (checkpoints), partial_fit, fit(warm_start=True), their CLI commands."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization
from torchmf.cli.main import main
from torchmf.errors import DataError, ModelFileError, NotFittedError
from torchmf.training import monitor as monitor_module

# every registered loss, with its default solver, plus the other explicit solver and the stateful optimisers
CASES = [
    dict(loss="mse"), dict(loss="mse", solver="sgd"), dict(loss="mse", solver="sgd", optimizer="adam"),
    dict(loss="mse", solver="sgd", optimizer="sparse_adam"), dict(loss="ials"), dict(loss="bpr"),
    dict(loss="logistic"), dict(loss="warp"),
]


@pytest.fixture(scope="module")
def small() -> torchmf.Interactions:
    data, _ = torchmf.datasets.synthetic(n_users=60, n_items=40, n_interactions=1200, rank=3, noise=0.1, seed=1)
    return data


def make(**kw) -> MatrixFactorization:
    return MatrixFactorization(**{"factors": 6, "epochs": 6, "verbose": False, "device": "cpu", **kw})


def weights(m: MatrixFactorization) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def interrupt_at(epoch: int):
    """Raise KeyboardInterrupt once epoch ``epoch`` has run, before it is recorded or checkpointed (a kill)."""
    original = monitor_module.Monitor.end_epoch

    def end_epoch(self, e, loss):
        if e == epoch:
            raise KeyboardInterrupt
        return original(self, e, loss)

    monitor_module.Monitor.end_epoch = end_epoch
    try:
        yield
    finally:
        monitor_module.Monitor.end_epoch = original


# ---------------------------------------------------------------------- resumable training
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_interrupted_fit_resumes_to_the_same_factors(small, tmp_path, kw):
    reference = make(**kw).fit(small)
    est = make(**kw)
    with interrupt_at(5), pytest.raises(KeyboardInterrupt):
        est.fit(small, checkpoint_dir=tmp_path, checkpoint_every=2)  # checkpoints after epochs 2 and 4
    resumed = make(**kw).fit(small, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    assert same(weights(resumed), weights(reference))
    assert resumed.history_ == reference.history_


def test_resume_with_validation_keeps_the_best_epoch(synthetic_split, tmp_path):
    train, test, _ = synthetic_split
    kw = dict(solver="sgd", epochs=8, early_stopping=2)
    reference = make(**kw).fit(train, validation=test)
    with interrupt_at(4), pytest.raises(KeyboardInterrupt):
        make(**kw).fit(train, validation=test, checkpoint_dir=tmp_path, checkpoint_every=1)
    resumed = make(**kw).fit(train, validation=test, checkpoint_dir=tmp_path, resume=True)
    assert same(weights(resumed), weights(reference))
    assert (resumed.history_, resumed.best_epoch_) == (reference.history_, reference.best_epoch_)


def test_checkpoint_files_are_complete_and_pruned(small, tmp_path):
    make(epochs=5).fit(small, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000004", "epoch-000005"]  # the last two kept
    latest = tmp_path / "epoch-000005"
    assert sorted(p.name for p in latest.iterdir()) == ["manifest.json", "rank-00000.safetensors"]  # no temp files
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["epoch"] == 5 and manifest["world_size"] == 1 and len(manifest["history"]) == 5
    assert manifest["fingerprint"]["n_users"] == small.n_users and len(manifest["fingerprint"]["data"]) == 64


def test_an_incomplete_checkpoint_is_skipped(small, tmp_path):
    reference = make().fit(small)
    with interrupt_at(4), pytest.raises(KeyboardInterrupt):
        make().fit(small, checkpoint_dir=tmp_path, checkpoint_every=1)
    (tmp_path / "epoch-000004").mkdir()  # a checkpoint killed before its manifest was written
    (tmp_path / "epoch-000004" / "rank-00000.safetensors").write_bytes(b"partial")
    resumed = make().fit(small, checkpoint_dir=tmp_path, resume=True)
    assert same(weights(resumed), weights(reference))


def test_resume_refuses_other_data_and_other_settings(small, tmp_path):
    make(epochs=2).fit(small, checkpoint_dir=tmp_path)
    other = small.subset(np.arange(len(small) - 1))
    with pytest.raises(DataError, match="other training data"):
        make(epochs=3).fit(other, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ModelFileError, match="reg="):
        make(epochs=3, reg=0.5).fit(small, checkpoint_dir=tmp_path, resume=True)
    longer = make(epochs=4).fit(small, checkpoint_dir=tmp_path, resume=True)  # more epochs is allowed
    assert same(weights(longer), weights(make(epochs=4).fit(small)))


def test_resume_without_a_checkpoint_trains_from_the_start(small, tmp_path, caplog):
    est = make().fit(small, checkpoint_dir=tmp_path / "none", resume=True)
    assert same(weights(est), weights(make().fit(small)))
    assert "no complete checkpoint" in caplog.text


def test_checkpoint_arguments_are_checked(small, tmp_path):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        make().fit(small, checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint_every"):
        make().fit(small, checkpoint_dir=tmp_path, checkpoint_every=0)


# ---------------------------------------------------------------------- partial_fit
def _split_new(data: torchmf.Interactions) -> tuple[torchmf.Interactions, torchmf.Interactions]:
    """Old rows, and new ones: every row of users 0-4 and items 0-2 (by index), new users and items."""
    new = np.isin(data.users, np.arange(5)) | np.isin(data.items, np.arange(3))
    return data.subset(~new), data.subset(new)


@pytest.mark.parametrize("kw", [dict(), dict(loss="ials"), dict(solver="sgd"), dict(loss="bpr")],
                         ids=["als", "ials", "sgd", "bpr"])
def test_partial_fit_grows_the_model_and_merges_the_seen_index(small, kw):
    old, new = _split_new(small)
    est = make(**kw).fit(old)
    n_users, n_items = len(est.user_map), len(est.item_map)
    est.partial_fit(new)
    assert len(est.user_map) == small.n_users and len(est.item_map) == small.n_items
    assert est.model.num_users == small.n_users and est.model.num_items == small.n_items
    assert est.user_map.ids[:n_users] == make(**kw).fit(old).user_map.ids  # old ids keep their rows
    assert len(est.seen_indices_) == len(small) and est.extras_["updates"][-1]["new_users"] == small.n_users - n_users
    assert len(est.item_map) - n_items == est.extras_["updates"][-1]["new_items"]
    new_user = small.user_map.raw([0])[0]
    assert set(est.item_map.raw(est.seen_items(est.user_map.index(new_user)))) == set(
        small.item_map.raw(small.items[small.users == 0]))
    assert np.asarray(est.top_k([est.user_map.index(new_user)], 5)[0]).shape == (1, 5)
    assert np.isfinite(est.user_factors).all() and np.isfinite(est.item_factors).all()


def test_partial_fit_als_moves_only_touched_rows_and_last_value_wins():
    data = torchmf.Interactions.from_dict({
        "a": {"x": 5, "y": 3}, "b": {"x": 4, "z": 2}, "c": {"y": 1, "z": 5}, "d": {"w": 4, "v": 2},
    })
    est = make(factors=3).fit(data)
    before = est.user_factors.copy()
    est.partial_fit({"a": {"x": 1.0}})  # an existing pair: the new value replaces the old one
    assert est.seen_values(est.user_map.index("a")).tolist() == [1.0, 3.0]
    assert len(est.seen_indices_) == 8
    untouched = [est.user_map.index(u) for u in "bcd"]
    assert np.array_equal(est.user_factors[untouched], before[untouched])
    assert not np.array_equal(est.user_factors[est.user_map.index("a")], before[est.user_map.index("a")])


def test_partial_fit_recovers_the_full_fit_on_planted_data(synthetic_split):
    # planted rank-4 data, noise sd 0.1: a full fit reaches test RMSE near the noise; the updated model
    # must be close to it (the tolerance is loose: the update re-solves touched rows only)
    train, test, _ = synthetic_split
    old, new = _split_new(train)
    full = make(factors=8).fit(train)
    upd = make(factors=8).fit(old).partial_fit(new)

    def rmse(m):
        pred = m.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")
        return float(np.sqrt(np.mean((pred - test.values) ** 2)))

    assert rmse(upd) < rmse(full) + 0.05


def test_partial_fit_errors_leave_the_model_as_it_was(small):
    with pytest.raises(NotFittedError):
        make().partial_fit(small)
    est = make().fit(small)
    state = weights(est)
    implicit = torchmf.Interactions.from_arrays(["new"], ["x"])
    with pytest.raises(DataError, match="explicit"):
        est.partial_fit(implicit)
    with pytest.raises(ValueError, match="epochs"):
        est.partial_fit(small, epochs=0)
    assert same(weights(est), state) and len(est.user_map) == small.n_users


def test_partial_fit_drops_the_stale_index_and_survives_a_save(small, tmp_path):
    old, new = _split_new(small)
    est = make().fit(old)
    est.index_ = object()  # any index of the old factors
    est.partial_fit(new)
    assert est.index_ is None
    est.save(tmp_path / "m")
    back = MatrixFactorization.load(tmp_path / "m", device="cpu")
    assert same(weights(back), weights(est)) and back.extras_["updates"] == est.extras_["updates"]


# ---------------------------------------------------------------------- warm start
def test_warm_start_continues_from_the_current_factors(small):
    old, _ = _split_new(small)
    est = make(epochs=4).fit(small)
    cold_first = make(epochs=1).fit(small).history_[0]["train_loss"]
    est.set_params(epochs=1).fit(small, warm_start=True)
    assert est.history_[0]["train_loss"] < cold_first
    grown = make(epochs=2).fit(old)
    grown.fit(small, warm_start=True)  # a superset of the model's ids: new rows are added
    assert len(grown.user_map) == small.n_users


def test_warm_start_needs_every_known_id_and_the_same_shape(small):
    old, _ = _split_new(small)
    est = make(epochs=2).fit(small)
    with pytest.raises(DataError, match="lacks user"):
        est.fit(old, warm_start=True)
    with pytest.raises(ValueError, match="factors"):
        est.set_params(factors=7).fit(small, warm_start=True)
    with pytest.raises(NotFittedError):
        make().fit(small, warm_start=True)


# ---------------------------------------------------------------------- CLI
def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _write(path: Path, data: torchmf.Interactions) -> Path:
    frame = data.to_pandas().rename(columns={"value": "rating"})
    frame[["user", "item", "rating"]].to_csv(path, index=False)
    return path


def test_cli_train_checkpoints_and_resumes(small, tmp_path):
    csv = _write(tmp_path / "r.csv", small)
    args = ["train", csv, "--factors", "4", "--epochs", "3", "--solver", "sgd", "--device", "cpu"]
    assert cli(*args, "-o", tmp_path / "a")[0] == 0
    code, _, err = cli(*args, "-o", tmp_path / "b", "--checkpoint-every", "1")
    assert code == 0, err
    assert (tmp_path / "b.ckpt" / "epoch-000003" / "manifest.json").is_file()
    code, _, err = cli(*args, "-o", tmp_path / "c", "--checkpoint-dir", tmp_path / "b.ckpt", "--resume")
    assert code == 0, err
    a, c = (MatrixFactorization.load(tmp_path / name, device="cpu") for name in "ac")
    assert same(weights(a), weights(c))
    code, _, err = cli(*args, "-o", tmp_path / "d", "--checkpoint-every", "0")
    assert code == 2 and "--checkpoint-every" in err


def test_cli_update(small, tmp_path):
    old, new = _split_new(small)
    assert cli("train", _write(tmp_path / "old.csv", old), "-o", tmp_path / "m", "--factors", "4",
               "--epochs", "2", "--device", "cpu")[0] == 0
    code, out, err = cli("update", tmp_path / "m", _write(tmp_path / "new.csv", new), "-o", tmp_path / "m2")
    assert code == 0, err
    assert "new users" in out
    m2 = MatrixFactorization.load(tmp_path / "m2", device="cpu")
    assert len(m2.user_map) == small.n_users and len(m2.seen_indices_) == len(small)
    code, _, err = cli("update", tmp_path / "missing", tmp_path / "new.csv", "-o", tmp_path / "m3")
    assert code == 2 and err.startswith("torchmf: error:")


def test_a_solver_without_checkpoint_support_is_refused(small, tmp_path, monkeypatch):
    from torchmf.solvers.als_solver import ALSSolver

    monkeypatch.delattr(ALSSolver, "state_dict")  # as a solver registered from outside might lack it
    with pytest.raises(ValueError, match="does not support checkpoints"):
        make().fit(small, checkpoint_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_partial_fit_grows_the_interaction_ranker_of_a_rating_model() -> None:
    # rating models rank by an iALS component (rank_by="interactions"): new ids must be rankable after an update
    base = {"u1": {"a": 5, "b": 3, "c": 4}, "u2": {"a": 2, "c": 5}, "u3": {"b": 4, "d": 1}}
    model = torchmf.MatrixFactorization(factors=4, verbose=False, device="cpu").fit(base)
    before = model._ranker.user_embs.weight[:3].clone()
    model.partial_fit({"u9": {"a": 4, "e": 5}})
    assert model._ranker.user_embs.weight.shape[0] == 4 and model._ranker.item_embs.weight.shape[0] == 5
    assert set(model.recommend("u9", k=3)["item"]) <= {"b", "c", "d"}
    assert len(model.similar_items("e", k=2)) == 2  # the new item has ranker factors too
    assert torch.equal(model._ranker.user_embs.weight[2], before[2])  # u3 shares no item with u9: untouched
