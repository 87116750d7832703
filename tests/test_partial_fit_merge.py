"""partial_fit's data side: the seen-index merge, touched-row selections, id-map growth, repeated updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmf
from torchmf.data.idmap import IdMap
from torchmf.estimator.touched import SeenSides, merge_seen, row_ranges
from torchmf.estimator.update import extend_map
from torchmf.solvers.als import als_side


def _csr(users: np.ndarray, n_users: int) -> np.ndarray:
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr


@pytest.mark.parametrize("n_items", [40, 70_000], ids=["radix", "large-ids"])
def test_merge_seen_matches_a_dict_where_the_last_value_wins(n_items):
    rng = np.random.default_rng(0)
    for _ in range(30):
        old_u, old_i = np.nonzero(rng.random((20, 25)) < 0.3)  # row-major: a CSR-sorted seen index
        old_v = rng.random(len(old_u)).astype(np.float32)
        k = int(rng.integers(1, 80))  # new pairs, with repeats among them and of old pairs
        new_u, new_i = rng.integers(0, 30, k), rng.integers(0, min(n_items, 30), k)
        new_v = rng.random(k).astype(np.float32)
        m = merge_seen(_csr(old_u, 20), old_i, old_v, new_u, new_i, new_v, 30, n_items)

        want = {(u, i): v for u, i, v in zip(old_u.tolist(), old_i.tolist(), old_v.tolist(), strict=True)}
        last = {}
        for j, (u, i, v) in enumerate(zip(new_u.tolist(), new_i.tolist(), new_v.tolist(), strict=True)):
            want[(u, i)] = v
            last[(u, i)] = j
        keys = sorted(want)
        assert list(zip(m.users.tolist(), m.items.tolist(), strict=True)) == keys
        assert np.array_equal(m.values, np.array([want[p] for p in keys], dtype=np.float32))
        assert np.array_equal(m.indptr, _csr(m.users, 30))
        # the new pairs' positions, in the order of their last occurrence
        assert [(m.users[p], m.items[p]) for p in m.new_pos] == sorted(last, key=last.get)
        assert m.is_new.sum() == len(last) and m.is_new[m.new_pos].all()


def test_selections_are_each_rows_entries_in_csr_order():
    rng = np.random.default_rng(1)
    users, items = np.nonzero(rng.random((12, 9)) < 0.4)
    values = rng.random(len(users)).astype(np.float32)
    m = merge_seen(_csr(users, 12), items, values, np.array([11]), np.array([8]), np.array([2.0], np.float32), 12, 9)
    sides = SeenSides(m)
    chosen = np.array([0, 3, 8])
    for side, rows_of, cols_of in (("item", m.items, m.users), ("user", m.users, m.items)):
        r, c, pos, indptr = sides.select(side, "some", chosen)
        assert np.array_equal(indptr, _csr(r, len(chosen)))
        want = sorted((j, int(col)) for j, row in enumerate(chosen) for col in cols_of[rows_of == row])
        assert list(zip(r.tolist(), c.tolist(), strict=True)) == want  # renumbered rows, then columns ascending
        assert np.array_equal(rows_of[pos], chosen[r]) and np.array_equal(cols_of[pos], c)
        assert sides.select(side, "some", chosen)[2] is pos  # computed once per (side, name)
    assert row_ranges(np.array([0, 2, 2, 5]), np.array([1])).size == 0


def test_als_side_takes_presorted_pairs_as_they_are():
    """The update's layouts pass the selections' row pointers: same layout as sorting the pairs."""
    rng = np.random.default_rng(2)
    users, items = np.nonzero(rng.random((15, 11)) < 0.4)  # CSR-sorted
    values = rng.random(len(users)).astype(np.float32)
    shuffle = rng.permutation(len(users))
    cpu = torch.device("cpu")
    given = als_side(users, items, values, 15, 11, cpu, indptr=_csr(users, 15))
    sorted_ = als_side(users[shuffle], items[shuffle], values[shuffle], 15, 11, cpu)
    for a, b in ((given.col, sorted_.col), (given.ratings, sorted_.ratings), (given.counts, sorted_.counts),
                 (given.pairs.conf.crow_indices(), sorted_.pairs.conf.crow_indices())):
        assert torch.equal(a, b)


def test_extend_map_keeps_integer_ids_and_still_resolves_strings():
    known = IdMap(np.array([10, 20, 30]), "user")
    grown, codes = extend_map(known, np.array([20, 40, 10, 50]))
    assert grown.ids == [10, 20, 30, 40, 50] and codes.tolist() == [1, 3, 0, 4]
    assert grown.raw([]).dtype.kind == "i"  # the next update's look-ups stay on an integer index
    grown, codes = extend_map(known, np.array(["30", "x"], dtype=object))  # the CLI reads ids as text
    assert grown.ids == [10, 20, 30, "x"] and codes.tolist() == [2, 3]


def test_two_updates_in_a_row_equal_the_union_and_leave_untouched_rows():
    data, _ = torchmf.datasets.synthetic(n_users=50, n_items=30, n_interactions=900, rank=3, noise=0.1, seed=3)
    rng = np.random.default_rng(0)
    part = rng.integers(0, 3, len(data))
    est = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=4, verbose=False, device="cpu")
    est.fit(data.subset(part == 0))
    first = data.subset(part == 1)
    est.partial_fit(first)
    est.partial_fit(data.subset(part == 2))
    seen = {(u, i) for u in est.user_map.ids for i in est.item_map.raw(est.seen_items(est.user_map.index(u)))}
    assert seen == set(zip(data.user_map.raw(data.users).tolist(), data.item_map.raw(data.items).tolist(), strict=True))
    assert len(est.extras_["updates"]) == 2

    # a user the update does not touch keeps its factors (iALS: rows solve independently)
    est2 = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=4, verbose=False, device="cpu").fit(first)
    users = est2.user_map.ids
    before = est2.user_factors.copy()
    new_user = data.subset(data.users == data.users[np.flatnonzero(part == 2)[0]])
    touched = set(new_user.user_map.raw(new_user.users).tolist())
    est2.partial_fit(new_user)
    kept = [j for j, u in enumerate(users) if u not in touched]
    assert kept and np.array_equal(est2.user_factors[kept], before[kept])
    assert torch.isfinite(est2.model.item_embs.weight).all()
