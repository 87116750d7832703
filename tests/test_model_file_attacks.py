"""Hostile model folders (in the spirit of safetensors' ``attacks/``): every one is a ModelFileError,
raised before anything large is allocated, without hanging and without running code.

Most attacks re-sign what they change (recompute the manifest checksum, rename the weights file
after its new SHA-256) so that the field-by-field validation is what must catch them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import torchmf
from torchmf import MatrixFactorization, ModelFileError
from torchmf.estimator.manifest import canonical_sha256
from torchmf.estimator.model_files import sha256_hex

META = "torchmf.json"


@pytest.fixture(scope="module")
def model():
    data, _ = torchmf.datasets.synthetic(n_users=12, n_items=9, n_interactions=80, rank=2, seed=4, id_prefix=True)
    return MatrixFactorization(factors=3, epochs=2, device="cpu", verbose=False).fit(data)


@pytest.fixture
def folder(model, tmp_path):
    path = tmp_path / "m"
    model.save(path)
    return path


def read_meta(folder):
    return json.loads((folder / META).read_text())


def write_meta(folder, meta, resign=True):
    if resign:
        meta["manifest_sha256"] = canonical_sha256(meta)
    (folder / META).write_text(json.dumps(meta))


def edit_meta(folder, edit):
    meta = read_meta(folder)
    edit(meta)
    write_meta(folder, meta)


def write_weights(folder, blob: bytes, meta=None):
    """Install ``blob`` as the weights file, re-signed: named after its SHA-256 in a re-signed manifest."""
    meta = read_meta(folder) if meta is None else meta
    (folder / meta["weights"]["file"]).unlink()
    sha = sha256_hex(blob)
    meta["weights"] = {"file": f"weights-{sha[:16]}.safetensors", "sha256": sha, "bytes": len(blob)}
    (folder / meta["weights"]["file"]).write_bytes(blob)
    write_meta(folder, meta)


def edit_tensors(folder, edit):
    meta = read_meta(folder)
    tensors = st_load((folder / meta["weights"]["file"]).read_bytes())
    edit(tensors)
    write_weights(folder, st_save(tensors), meta)


def raw_safetensors(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


def weights_path(folder):
    return folder / read_meta(folder)["weights"]["file"]


def refused(folder, match: str | None = None):
    with pytest.raises(ModelFileError, match=match):
        torchmf.load(folder, device="cpu")


# ---------------------------------------------------------------------- not regular files, hangs
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_weights_linked_to_a_device(folder, device):
    path = weights_path(folder)
    path.unlink()
    path.symlink_to(device)
    refused(folder, "not a regular file")


def test_weights_are_a_named_pipe(folder):
    path = weights_path(folder)
    path.unlink()
    os.mkfifo(path)  # opening it for reading would block forever without O_NONBLOCK
    refused(folder, "not a regular file")


def test_manifest_is_a_named_pipe(folder):
    (folder / META).unlink()
    os.mkfifo(folder / META)
    refused(folder, "not a regular file")


def test_manifest_is_a_folder(folder):
    (folder / META).unlink()
    (folder / META).mkdir()
    refused(folder, "is a folder")


def test_model_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    refused(tmp_path / "f", "not a folder")


def test_weights_symlinked_to_a_regular_file_is_fine(model, folder, tmp_path):
    path = weights_path(folder)
    moved = tmp_path / "elsewhere.safetensors"
    path.rename(moved)
    path.symlink_to(moved)
    assert torchmf.load(folder, device="cpu").user_map.ids == model.user_map.ids


# ---------------------------------------------------------------------- JSON bombs
@pytest.mark.parametrize("depth", [100_000, 65])
def test_deeply_nested_manifest(folder, depth):
    (folder / META).write_text("[" * depth + "]" * depth)
    refused(folder, f"nested {depth} levels")


def test_nesting_inside_strings_does_not_count(folder, model):
    edit_meta(folder, lambda m: m["extras"].update(note="[" * 1000 + "{" * 1000))
    assert torchmf.load(folder, device="cpu").extras_["note"].startswith("[[[")


def test_repeated_key(folder):
    text = (folder / META).read_text()
    (folder / META).write_text(text.replace('"implicit": false', '"implicit": false, "implicit": true', 1))
    refused(folder, "'implicit' appears twice")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_constants(folder, token):
    text = (folder / META).read_text()
    (folder / META).write_text(text.replace('"rating_range": [', f'"rating_range": [{token}, ', 1))
    refused(folder, "not valid JSON")


# ---------------------------------------------------------------------- the manifest's checksum
@pytest.mark.parametrize("attack", ["flip-id-byte", "swap-ids", "null-id", "flip-implicit", "reverse-range"])
def test_unsigned_edits_break_the_checksum(folder, attack):
    meta = read_meta(folder)
    ids = meta["user_ids"]["values"]
    if attack == "flip-id-byte":
        ids[0] = ids[0][:-1] + chr(ord(ids[0][-1]) ^ 1)
    elif attack == "swap-ids":
        ids[0], ids[1] = ids[1], ids[0]
    elif attack == "null-id":
        ids[0] = None
    elif attack == "flip-implicit":
        meta["implicit"] = not meta["implicit"]
    else:
        meta["rating_range"] = meta["rating_range"][::-1]
    write_meta(folder, meta, resign=False)
    refused(folder, "manifest checksum mismatch")


# ---------------------------------------------------------------------- re-signed field attacks
def _set(path, value):
    def edit(meta):
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit


FIELD_ATTACKS = {
    "null-id": (_set(("user_ids", "values", 0), None), "user id #0"),
    "true-id": (_set(("item_ids", "values", 2), True), "item id #2"),
    "int-id-declared-str": (_set(("user_ids", "values", 1), 7), "user id #1"),
    "huge-int-id": (_set(("user_ids", "type"), "mixed"), None),  # completed below
    "float-nan-range": (_set(("rating_range",), [1.0, None]), "rating_range"),
    "reversed-range": (_set(("rating_range",), [5.0, 1.0]), "rating_range"),
    "range-of-three": (_set(("rating_range",), [1.0, 2.0, 3.0]), "rating_range"),
    "implicit-string": (_set(("implicit",), "no"), "implicit"),
    "format-version-string": (_set(("format_version",), "2"), "format version"),
    "format-version-future": (_set(("format_version",), 3), "format version 3"),
    "unknown-param": (_set(("params", "evil"), 1), "params"),
    "bad-param-type": (_set(("params", "factors"), "3"), "params"),
    "effective-unknown-loss": (_set(("effective_params", "loss"), "evil"), "unknown loss"),
    "effective-factors-huge": (_set(("effective_params", "factors"), 35_791_394), "factors"),
    "best-epoch-out-of-range": (_set(("best_epoch",), 999), "best_epoch"),
    "history-not-list": (_set(("history",), {"a": 1}), "history"),
    "extras-not-object": (_set(("extras",), [1]), "extras"),
    "weights-path-traversal": (_set(("weights", "file"), "../../../etc/passwd"), "weights.file"),
    "weights-bytes-negative": (_set(("weights", "bytes"), -1), "weights.bytes"),
    "files-path-traversal": (_set(("files", "x"), {"file": "../x", "sha256": "0" * 64, "bytes": 1}), "files"),
    "tensor-shape-huge": (_set(("tensors", "user_embs.weight", "shape"), [12, 35_791_394]), "factors|shape"),
    "tensor-dtype": (_set(("tensors", "seen_indices", "dtype"), "float32"), "seen_indices"),
    "missing-bias-tensor": (lambda m: m["tensors"].pop("user_bias.weight"), "tensors"),
    "bias-shape": (_set(("tensors", "user_bias.weight", "shape"), [12, 2]), "user_bias"),
    "missing-field": (lambda m: m.pop("item_ids"), "missing field"),
    # the ranking component of a rating model (torchmf.estimator.ranker)
    "ranker-shape": (_set(("tensors", "ranker.item_embs.weight", "shape"), [9, 99]), "ranker.item_embs"),
    "ranker-without-extras": (lambda m: m["extras"].pop("ranker"), "ranker"),
    "ranker-half": (lambda m: m["tensors"].pop("ranker.user_embs.weight"), "tensors"),
    "unknown-feature-tensor": (_set(("tensors", "evil.weight"), {"shape": [1], "dtype": "float32"}), "tensors"),
}


def _huge_int_id(meta):
    meta["user_ids"]["type"] = "mixed"
    meta["user_ids"]["values"][0] = 2**70


FIELD_ATTACKS["huge-int-id"] = (_huge_int_id, "user id #0")


@pytest.mark.parametrize("name", list(FIELD_ATTACKS))
def test_resigned_field_attacks(folder, name):
    edit, match = FIELD_ATTACKS[name]
    edit_meta(folder, edit)
    refused(folder, match)


def test_duplicate_ids_after_resigning(folder):
    edit_meta(folder, _set(("item_ids", "values", 1), read_meta(folder)["item_ids"]["values"][0]))
    refused(folder, "item ids must be distinct")


# ---------------------------------------------------------------------- re-signed tensor attacks
TENSOR_ATTACKS = {
    "indptr-decreasing": (lambda t: t["seen_indptr"].__setitem__(3, t["seen_indptr"][2] - 1), "seen_indptr"),
    "indptr-not-ending-at-nnz": (lambda t: t["seen_indptr"].__setitem__(-1, 1), "seen_indptr"),
    "indices-too-large": (lambda t: t["seen_indices"].__setitem__(0, 9), "seen_indices"),
    "indices-negative": (lambda t: t["seen_indices"].__setitem__(0, -1), "seen_indices"),
    "nan-weight": (lambda t: t["item_embs.weight"].__setitem__((0, 0), math.nan), "NaN"),
    "inf-bias": (lambda t: t["user_bias.weight"].__setitem__((0, 0), math.inf), "NaN or infinite"),
    "wider-factors": (lambda t: t.__setitem__("user_embs.weight", torch.zeros(12, 4)), "user_embs"),
    "float64": (lambda t: t.__setitem__("item_embs.weight", t["item_embs.weight"].double()), "item_embs"),
    "extra-tensor": (lambda t: t.__setitem__("evil", torch.zeros(1)), "evil"),
    "missing-tensor": (lambda t: t.pop("global_bias"), "global_bias"),
}


@pytest.mark.parametrize("name", list(TENSOR_ATTACKS))
def test_resigned_tensor_attacks(folder, name):
    edit, match = TENSOR_ATTACKS[name]
    edit_tensors(folder, edit)
    refused(folder, match)


# ---------------------------------------------------------------------- hand-made safetensors files
F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
SAFETENSORS_ATTACKS = {
    "header-length-huge": (raw_safetensors({"a": F32}, b"\0" * 8, header_len=2**63), "header length"),
    "header-length-past-end": (raw_safetensors({"a": F32}, b"\0" * 8, header_len=10_000), "header length"),
    "too-short": (b"\x01\x02", "too short"),
    "header-not-json": (struct.pack("<Q", 8) + b"{{{{{{{{", "not valid JSON"),
    "header-nested": (struct.pack("<Q", 200) + b"[" * 100 + b"]" * 100, "nested"),
    "header-a-list": (raw_safetensors([1, 2], b""), "not a JSON object"),  # type: ignore[arg-type]
    "unknown-dtype": (raw_safetensors({"a": {**F32, "dtype": "PICKLE"}}, b"\0" * 8), "unsupported dtype"),
    "negative-shape": (raw_safetensors({"a": {**F32, "shape": [-2]}}, b"\0" * 8), "shape"),
    "shape-offsets-mismatch": (raw_safetensors({"a": {**F32, "shape": [1 << 40]}}, b"\0" * 8), "do not match"),
    "offsets-past-end": (raw_safetensors({"a": {**F32, "data_offsets": [8, 16]}}, b"\0" * 8), "starts at byte 8"),
    "overlap": (raw_safetensors({"a": F32, "b": F32}, b"\0" * 8), "overlap"),
    "gap-at-end": (raw_safetensors({"a": F32}, b"\0" * 16), "cover 8 bytes"),
    "misaligned": (raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]},
                                    "b": {"dtype": "I32", "shape": [], "data_offsets": [0, 0]}}, b"\0" * 6),
                   "do not match"),
    "offsets-strings": (raw_safetensors({"a": {**F32, "data_offsets": ["0", "8"]}}, b"\0" * 8), "two integers"),
    "pickle-bytes": (b"\x80\x04\x95" + b"\0" * 61, "header length"),
}


@pytest.mark.parametrize("name", list(SAFETENSORS_ATTACKS))
def test_hand_made_weights_files(folder, name):
    blob, match = SAFETENSORS_ATTACKS[name]
    write_weights(folder, blob)
    refused(folder, match)


def test_size_checked_before_reading(folder):
    # the manifest promises a different size than the file has: refused from fstat, before any read
    edit_meta(folder, lambda m: m["weights"].update(bytes=m["weights"]["bytes"] * 10**6))
    refused(folder, "bytes, the manifest says")


@pytest.mark.parametrize("mmap", [False, True])
def test_empty_version_1_weights(tmp_path, mmap):
    target = tmp_path / "v1"
    shutil.copytree(Path(__file__).parent / "data" / "model_v1", target)
    (target / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="too short"):
        torchmf.load(target, device="cpu", mmap=mmap)
