"""IdMap: raw id <-> contiguous index bijection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchmf import DataError, IdMap, UnknownIdError

# ids as a user would give them: short strings, or ints that fit in int64
str_ids = st.text(min_size=0, max_size=8)
int_ids = st.integers(min_value=-(2**62), max_value=2**62)
raw_lists = st.one_of(st.lists(str_ids, min_size=1, max_size=60), st.lists(int_ids, min_size=1, max_size=60))
unique_lists = st.one_of(
    st.lists(str_ids, min_size=1, max_size=40, unique=True),
    st.lists(int_ids, min_size=1, max_size=40, unique=True),
)


# ---------------------------------------------------------------------- encode / raw
@given(raw_lists)
def test_encode_raw_round_trip(raw):
    idmap, codes = IdMap.encode(raw, "user")
    assert codes.dtype == np.int64
    assert codes.shape == (len(raw),)
    # raw(codes) gives back exactly the input ids, element by element
    assert idmap.raw(codes).tolist() == raw
    assert idmap.indices(raw).tolist() == codes.tolist()


@given(raw_lists)
def test_encode_order_of_first_appearance(raw):
    idmap, codes = IdMap.encode(raw, "item")
    # dict.fromkeys keeps the first occurrence of each key, in order
    first_seen = list(dict.fromkeys(raw))
    assert idmap.ids == first_seen
    assert len(idmap) == len(first_seen)
    # index i is the i-th distinct id, so codes are 0, 1, 2, ... at first sight
    assert [idmap.index(r) for r in first_seen] == list(range(len(first_seen)))
    assert codes.max() == len(first_seen) - 1


@given(unique_lists, st.data())
def test_indices_ignore_gives_minus_one(ids, data):
    idmap = IdMap(ids, "user")
    if isinstance(ids[0], str):
        absent = data.draw(st.lists(str_ids.filter(lambda s: s not in ids), min_size=1, max_size=5))
    else:
        absent = data.draw(st.lists(int_ids.filter(lambda s: s not in ids), min_size=1, max_size=5))
    query = ids[:3] + absent
    got = idmap.indices(query, missing="ignore")
    # the known ids map to their position in ``ids``; every absent one to -1
    assert got.tolist() == list(range(min(3, len(ids)))) + [-1] * len(absent)
    with pytest.raises(UnknownIdError):
        idmap.indices(query, missing="error")


def test_indices_ignore_with_other_type_gives_minus_one():
    # a str query against int ids (and vice versa) is simply not found
    assert IdMap([1, 2], "user").indices(["1", 2], missing="ignore").tolist() == [-1, 1]
    assert IdMap(["1", "2"], "user").indices([1, "2"], missing="ignore").tolist() == [-1, 1]


def test_unknown_id_error_is_key_error_and_names_the_id():
    idmap = IdMap(["alice", "bob"], "user")
    with pytest.raises(KeyError) as info:
        idmap.index("carol")
    err = info.value
    assert isinstance(err, UnknownIdError)
    assert err.raw_id == "carol"
    assert err.kind == "user"
    assert "carol" in str(err)
    assert "user" in str(err)
    with pytest.raises(UnknownIdError, match="zed"):
        idmap.indices(["alice", "zed"])


def test_contains_and_len():
    idmap = IdMap([10, 20, 30], "item")
    assert 20 in idmap
    assert 40 not in idmap
    assert [1, 2] not in idmap  # unhashable is simply absent
    assert len(idmap) == 3
    assert list(idmap) == [10, 20, 30]


def test_duplicate_ids_rejected():
    with pytest.raises(DataError, match="'a'"):
        IdMap(["a", "b", "a"], "user")


def test_missing_id_rejected_by_encode():
    with pytest.raises(DataError, match="position 1"):
        IdMap.encode(np.array(["a", None], dtype=object), "user")


# ---------------------------------------------------------------------- resolve
def test_resolve_str_finds_int():
    idmap = IdMap([5, 7, 9], "user")
    got = idmap.resolve("7")
    assert got == 7 and isinstance(got, (int, np.integer)) and not isinstance(got, str)
    assert idmap.index(got) == 1


def test_resolve_int_finds_str():
    idmap = IdMap(["5", "7"], "item")
    got = idmap.resolve(7)
    assert got == "7" and isinstance(got, str)


def test_resolve_exact_match_first():
    idmap = IdMap(["7", 7], "item")
    assert idmap.resolve("7") == "7"
    assert idmap.resolve(7) == 7 and not isinstance(idmap.resolve(7), str)


def test_resolve_leading_zeros_is_a_different_id():
    # Readers keep "007" a string so it never collides with 7 (readers._parse_ids);
    # resolve must honour the same rule: "007" is not the int 7.
    with pytest.raises(UnknownIdError, match="007"):
        IdMap([7, 8], "user").resolve("007")
    # and the int 7 is not the string "007"
    with pytest.raises(UnknownIdError):
        IdMap(["007", "008"], "user").resolve(7)
    # when "007" is present as a string it is found as itself
    assert IdMap(["007", 7], "user").resolve("007") == "007"


def test_resolve_unknown_raises():
    with pytest.raises(UnknownIdError, match="nobody"):
        IdMap([1, 2], "user").resolve("nobody")


# ---------------------------------------------------------------------- JSON and extend
@given(unique_lists)
def test_json_round_trip(ids):
    idmap = IdMap(ids, "item")
    payload = json.loads(json.dumps(idmap.to_json()))
    back = IdMap.from_json(payload, "item")
    assert back.ids == ids
    assert back.kind == "item"
    assert back.indices(ids).tolist() == list(range(len(ids)))
    # types survive: ints come back as ints, strings as strings
    assert [type(x) for x in back.ids] == [type(x) for x in ids]


def test_to_json_rejects_unsaveable_ids():
    with pytest.raises(DataError, match="tuple"):
        IdMap([("a", 1), ("b", 2)], "user").to_json()


@given(unique_lists, st.data())
def test_extend_appends_new_ids_only(ids, data):
    idmap = IdMap(ids, "user")
    pool = str_ids if isinstance(ids[0], str) else int_ids
    more = data.draw(st.lists(st.one_of(st.sampled_from(ids), pool), max_size=10))
    new = idmap.extend(more)
    expected_new = [m for m in dict.fromkeys(more) if m not in ids]
    assert new.ids == ids + expected_new
    # old ids keep their indices; the original map is unchanged
    assert new.indices(ids).tolist() == list(range(len(ids)))
    assert idmap.ids == ids
    if not expected_new:
        assert new is idmap


def test_extend_int_map_keeps_int_lookups():
    idmap = IdMap([1, 2], "user").extend([3])
    assert idmap.index(3) == 2
    assert idmap.resolve("3") == 3
    assert IdMap.from_json(idmap.to_json(), "user").ids == [1, 2, 3]


def test_subset():
    idmap = IdMap(["a", "b", "c", "d"], "item")
    sub = idmap.subset(np.array([3, 1]))
    assert sub.ids == ["d", "b"]
    assert sub.index("b") == 1
