"""Saving and loading models: safetensors + JSON, atomic, tamper-evident."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import torchmf
from torchmf import MatrixFactorization, ModelFileError
from torchmf.estimator.manifest import canonical_sha256
from torchmf.estimator.persistence import load_state, save_state

META = "torchmf.json"


def weights_of(folder):
    """The weights file the manifest names (``weights-<sha256[:16]>.safetensors``)."""
    return folder / json.loads((folder / META).read_text())["weights"]["file"]


@pytest.fixture(scope="module")
def data():
    data, _ = torchmf.datasets.synthetic(n_users=50, n_items=30, n_interactions=600, rank=3, seed=5)
    return data  # int ids 0..49 / 0..29


@pytest.fixture
def model(data):
    return MatrixFactorization(factors=4, epochs=5, device="cpu", verbose=False).fit(data)


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "model"
    model.save(path)
    return path


def assert_same_behaviour(a: MatrixFactorization, b: MatrixFactorization) -> None:
    users, items = a.user_map.ids, a.item_map.ids
    assert b.user_map.ids == users and b.item_map.ids == items
    uu = [u for u in users for _ in items]
    ii = [i for _ in users for i in items]
    np.testing.assert_array_equal(a.predict(uu, ii), b.predict(uu, ii))
    pd.testing.assert_frame_equal(a.recommend(users, k=5), b.recommend(users, k=5))
    pd.testing.assert_frame_equal(a.similar_items(items[0], k=3), b.similar_items(items[0], k=3))
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert a.rating_range_ == b.rating_range_
    assert a.get_params() == b.get_params()


# ---------------------------------------------------------------------- round trip
def test_round_trip(model, saved):
    loaded = torchmf.load(saved)
    assert isinstance(loaded, MatrixFactorization)
    assert_same_behaviour(model, loaded)
    assert loaded.history_ == model.history_
    assert loaded.effective_params == model.effective_params
    again = MatrixFactorization.load(saved)
    assert_same_behaviour(model, again)


def test_round_trip_after_fold_in(model, tmp_path):
    model.fold_in("new-user", {0: 5.0, 3: 1.0})  # a str user among int ids
    model.fold_in(7, {1: 2.0, 2: 4.0})  # refresh an existing user
    model.save(tmp_path / "m")
    loaded = torchmf.load(tmp_path / "m")
    assert_same_behaviour(model, loaded)
    assert loaded.user_map.ids[-1] == "new-user"
    # seen items survive: the folded-in items are still excluded
    recs = loaded.recommend("new-user", k=30)
    assert not {0, 3} & set(recs["item"])
    assert not {1, 2} & set(loaded.recommend(7, k=30)["item"])
    # and the loaded model can keep folding in
    loaded.fold_in("another", {4: 3.0})
    assert "another" in loaded.user_map


def test_weights_file_is_standard_safetensors():
    import torch
    from safetensors.torch import load

    from torchmf.estimator.model_files import safetensors_bytes

    # our one-copy writer (used by save_state) against the reference reader, every dtype and an empty tensor
    ts = {"P": torch.randn(3, 4), "idx": torch.arange(5), "empty": torch.zeros(0),
          "d": torch.ones(2, dtype=torch.float64), "h": torch.ones(3, dtype=torch.float16),
          "i": torch.arange(3, dtype=torch.int32)}
    got = load(bytes(safetensors_bytes(ts, {"format": "x"})))
    assert set(got) == set(ts) and all(torch.equal(got[k], ts[k]) for k in ts)


def test_loaded_model_can_be_saved_again(saved, model, tmp_path):
    loaded = torchmf.load(saved)
    loaded.save(tmp_path / "copy")
    assert_same_behaviour(model, torchmf.load(tmp_path / "copy"))


@pytest.mark.parametrize("prefix", [False, True], ids=["int-ids", "str-ids"])
def test_ids_keep_their_types(prefix, tmp_path):
    data, _ = torchmf.datasets.synthetic(n_users=20, n_items=15, n_interactions=150, rank=2, seed=1, id_prefix=prefix)
    model = MatrixFactorization(factors=2, epochs=2, device="cpu", verbose=False).fit(data)
    model.save(tmp_path / "m")
    loaded = torchmf.load(tmp_path / "m")
    assert loaded.user_map.ids == model.user_map.ids
    assert [type(x) for x in loaded.item_map.ids] == [type(x) for x in model.item_map.ids]
    expected_type = str if prefix else int
    assert all(type(x) is expected_type for x in loaded.user_map.ids)
    u, i = model.user_map.ids[3], model.item_map.ids[4]
    assert loaded.predict(u, i) == model.predict(u, i)


def test_folder_holds_only_safetensors_and_json(saved):
    weights = weights_of(saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted([weights.name, META])
    meta = json.loads((saved / META).read_text())
    assert meta["format"] == "torchmf-model" and meta["format_version"] == 2
    # content-addressed: the name carries the first 16 hex digits of the file's SHA-256
    blob = weights.read_bytes()
    assert weights.name == f"weights-{hashlib.sha256(blob).hexdigest()[:16]}.safetensors"
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    assert "user_embs.weight" in header
    assert b"\x80\x04" not in blob[:2]  # not a pickle stream (protocol 2+ starts with 0x80)


def test_save_over_existing_model_is_atomic(data, model, saved):
    other = MatrixFactorization(factors=4, epochs=5, seed=1, device="cpu", verbose=False).fit(data)
    other.save(saved)
    assert_same_behaviour(other, torchmf.load(saved))
    model.save(saved)
    assert_same_behaviour(model, torchmf.load(saved))
    # no temporary or old copies left beside the target
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    assert sorted(p.name for p in saved.iterdir()) == sorted([weights_of(saved).name, META])


def test_save_onto_a_file_fails(model, tmp_path):
    target = tmp_path / "file"
    target.write_text("precious")
    with pytest.raises(ModelFileError):
        model.save(target)
    assert target.read_text() == "precious"


# ---------------------------------------------------------------------- corrupt models
def test_missing_folder(tmp_path):
    with pytest.raises(ModelFileError, match="no such folder"):
        torchmf.load(tmp_path / "nothing-here")


def test_folder_without_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError):
        torchmf.load(tmp_path / "empty")


@pytest.mark.parametrize("missing", ["weights", META])
def test_folder_missing_one_file(saved, missing):
    (weights_of(saved) if missing == "weights" else saved / META).unlink()
    with pytest.raises(ModelFileError):
        torchmf.load(saved)


def test_truncated_weights(saved):
    path = weights_of(saved)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError):
        torchmf.load(saved)


@pytest.mark.parametrize("where", [0, 10, -1, -100], ids=["header-len", "header", "last", "data"])
def test_flipped_byte_in_weights(saved, where):
    path = weights_of(saved)
    blob = bytearray(path.read_bytes())
    blob[where] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError):
        torchmf.load(saved)


def _edit_meta(saved, edit, resign: bool = True) -> None:
    """Apply ``edit`` to the manifest; ``resign`` recomputes its checksum so the field checks are reached."""
    path = saved / META
    meta = json.loads(path.read_text())
    edit(meta)
    if resign and isinstance(meta, dict):
        meta["manifest_sha256"] = canonical_sha256(meta)
    path.write_text(json.dumps(meta))


def _set_shape(meta):
    meta["tensors"]["user_embs.weight"]["shape"][1] += 1


def _set_dtype(meta):
    meta["tensors"]["item_embs.weight"]["dtype"] = "float64"


def _set_version(meta):
    meta["format_version"] = 99


def _drop_tensor(meta):
    del meta["tensors"]["seen_indices"]


def _drop_user(meta):
    meta["user_ids"]["values"] = meta["user_ids"]["values"][:-1]


def _duplicate_user(meta):
    meta["user_ids"]["values"][1] = meta["user_ids"]["values"][0]


def _bad_params(meta):
    meta["params"]["factors"] = 0


def _factors_mismatch(meta):
    meta["effective_params"]["factors"] = 7


def _bad_checksum(meta):
    meta["weights"]["sha256"] = "0" * 64


EDITS = {
    "shape": _set_shape,
    "dtype": _set_dtype,
    "format_version": _set_version,
    "tensor-list": _drop_tensor,
    "fewer-user-ids": _drop_user,
    "duplicate-user-id": _duplicate_user,
    "invalid-params": _bad_params,
    "factors-mismatch": _factors_mismatch,
    "checksum": _bad_checksum,
}


@pytest.mark.parametrize("edit", list(EDITS.values()), ids=list(EDITS))
def test_edited_json(saved, edit):
    _edit_meta(saved, edit)
    with pytest.raises(ModelFileError):
        torchmf.load(saved)


# (the format version is checked first: it decides which checksum rules apply)
SIGNED = {k: v for k, v in EDITS.items() if k != "format_version"}


@pytest.mark.parametrize("edit", list(SIGNED.values()), ids=list(SIGNED))
def test_edited_json_without_new_checksum(saved, edit):
    _edit_meta(saved, edit, resign=False)
    with pytest.raises(ModelFileError, match="manifest checksum mismatch"):
        torchmf.load(saved)


@pytest.mark.parametrize(
    "content",
    ['{"hello": "world"}', "[1, 2, 3]", '"torchmf-model"', "not json at all {", "", '{"format": "torchmf-model"}'],
    ids=["foreign-object", "list", "string", "garbage", "empty", "format-only"],
)
def test_foreign_json(saved, content):
    (saved / META).write_text(content)
    with pytest.raises(ModelFileError):
        torchmf.load(saved)


def test_binary_json(saved):
    (saved / META).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelFileError):
        torchmf.load(saved)


def test_model_file_error_is_value_error():
    assert issubclass(ModelFileError, ValueError)
    assert issubclass(ModelFileError, torchmf.TorchMFError)


# ---------------------------------------------------------------------- version 1 folders
V1 = Path(__file__).parent / "data" / "model_v1"


def test_reads_version_1_folder(tmp_path):
    # tests/data/model_v1 was written by the version-1 writer (commit f1ec81c): 8 int users plus the
    # folded-in str user "visitor", 6 items, factors=2, biases; the expected values were printed then.
    loaded = torchmf.load(V1, device="cpu")
    assert loaded.user_map.ids == [0, 1, 2, 3, 4, 5, 6, 7, "visitor"]
    np.testing.assert_allclose(loaded.predict([0, 1, "visitor"], [0, 1, 2]),
                               [2.3638393878936768, 3.5201025009155273, 2.4402008056640625], rtol=0, atol=0)
    assert loaded.recommend("visitor", k=3)["item"].tolist() == [1, 5, 3]
    # saving over a version-1 folder upgrades it: the old weights file is removed, nothing else
    target = tmp_path / "v1"
    shutil.copytree(V1, target)
    (target / "notes.txt").write_text("mine")
    loaded.save(target)
    assert sorted(p.name for p in target.iterdir()) == sorted([weights_of(target).name, META, "notes.txt"])
    assert_same_behaviour(loaded, torchmf.load(target))


def test_version_1_checksum_still_checked(tmp_path):
    target = tmp_path / "v1"
    shutil.copytree(V1, target)
    blob = bytearray((target / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (target / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        torchmf.load(target)


# ---------------------------------------------------------------------- foreign files, overwrite
def test_foreign_files_in_a_model_folder_survive(model, saved):
    (saved / "notes.txt").write_text("precious")
    (saved / "sub").mkdir()
    (saved / "sub" / "x").write_text("x")
    model.save(saved)
    model.save(saved)
    assert (saved / "notes.txt").read_text() == "precious" and (saved / "sub" / "x").read_text() == "x"
    assert sorted(p.name for p in saved.iterdir()) == sorted([weights_of(saved).name, META, "notes.txt", "sub"])


def test_non_model_folder_needs_overwrite(model, tmp_path):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(ModelFileError, match=r"papers: folder is not empty and holds no torchmf model.*notes\.txt"):
        model.save(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    model.save(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "precious"
    assert_same_behaviour(model, torchmf.load(folder))


def test_empty_folder_and_dot(model, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    model.save(tmp_path / "empty")
    assert_same_behaviour(model, torchmf.load(tmp_path / "empty"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    model.save(".")
    model.save(".")
    assert_same_behaviour(model, torchmf.load("."))
    model.save("rel/sub")
    assert_same_behaviour(model, torchmf.load("rel/sub"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "work"]


def test_parent_is_a_file(model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match=r"file/m: cannot save the model there"):
        model.save(tmp_path / "file" / "m")


# ---------------------------------------------------------------------- mmap, extra files
def test_mmap_load_shares_and_folds_in(model, saved):
    mapped = MatrixFactorization.load(saved, device="cpu", mmap=True)
    assert_same_behaviour(model, mapped)
    before = weights_of(saved).read_bytes()
    mapped.fold_in(0, {1: 2.0, 2: 4.0})  # writes a row of the mapped weights: copy-on-write
    mapped.fold_in("new", {3: 3.0})
    assert weights_of(saved).read_bytes() == before  # the file is never written
    assert_same_behaviour(model, torchmf.load(saved))
    mapped.save(saved)  # the mapped model can be saved over its own folder
    assert torchmf.load(saved).user_map.ids[-1] == "new"


def test_extra_files_round_trip(saved, tmp_path):
    state = load_state(saved, device="cpu")
    src = tmp_path / "index.bin"
    src.write_bytes(b"\x00index")
    save_state(state, saved, extra_files={"index.hnsw": b"graph", "ids.bin": src})
    again = load_state(saved, device="cpu")
    assert again.files == {"index.hnsw": b"graph", "ids.bin": b"\x00index"}
    again.files["index.hnsw"] = b"graph v2"
    save_state(again, saved)  # the state's files are saved again, replaced atomically
    assert load_state(saved, device="cpu").files == {"index.hnsw": b"graph v2", "ids.bin": b"\x00index"}
    assert len(list(saved.glob("file-*"))) == 2  # the old index file was removed
    stored = next(saved.glob("file-*-index.hnsw"))
    stored.write_bytes(b"graph v3")
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_state(saved)
    with pytest.raises(ValueError, match="extra file name"):
        save_state(again, saved, extra_files={"../escape": b""})


def test_extra_files_survive_load_and_save_of_the_estimator(saved, tmp_path):
    save_state(load_state(saved, device="cpu"), saved, extra_files={"index.hnsw": b"graph"})
    est = torchmf.load(saved, device="cpu")
    est.save(tmp_path / "copy")
    assert load_state(tmp_path / "copy").files == {"index.hnsw": b"graph"}


V1_ANN = Path(__file__).parent / "data" / "model_v1_ann"


def test_reads_version_1_folder_with_an_index_and_upgrades_it(tmp_path):
    # tests/data/model_v1_ann was written by the version-1 writer of main at 1446c24 (seen values stored,
    # HNSW index beside the weights): 20 users x 30 items, factors=4; the expected values were printed then.
    loaded = torchmf.load(V1_ANN, device="cpu")
    np.testing.assert_array_equal(loaded.predict([0, 1, 2], [0, 1, 2]),
                                  np.array([3.273674249649048, 3.4137775897979736, 2.701632499694824], np.float32))
    assert loaded.index_ is not None and loaded.recommend(0, k=3, approximate=True)["item"].tolist() == [3, 23, 26]
    assert not np.isnan(loaded.seen_values_).any()
    target = tmp_path / "m"
    shutil.copytree(V1_ANN, target)
    loaded.save(target)  # version 2: the old weights and index files go, the index travels in "files"
    names = sorted(p.name for p in target.iterdir() if p.name != META)
    assert len(names) == 3 and [n.split("-")[0] for n in names] == ["file", "file", "weights"], names
    again = torchmf.load(target, device="cpu")
    assert_same_behaviour(loaded, again)
    assert again.recommend(0, k=3, approximate=True)["item"].tolist() == [3, 23, 26]
    np.testing.assert_array_equal(again.seen_values_, loaded.seen_values_)
