"""Memory-lean fit set-up (issue 12): CSR input kept as CSR, layouts built from it, the same numbers as before."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import torchmf
from torchmf.data import checks as checks_module
from torchmf.data.csr import csr_transpose
from torchmf.errors import DataError
from torchmf.solvers import ragged as ragged_module
from torchmf.solvers.cg import padded_gather
from torchmf.solvers.ials import confidence
from torchmf.solvers.ragged import ragged_csr, ragged_layout


def _matrix(seed: int = 0, n_users: int = 300, n_items: int = 80, nnz: int = 3000) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, n_users, nnz), rng.zipf(1.4, nnz) % n_items
    m = sp.csr_matrix((rng.integers(1, 9, nnz).astype(np.float32), (u, i)), shape=(n_users + 4, n_items + 2))
    m.sum_duplicates()
    return m  # the extra rows and columns are empty: compact() drops them


def test_from_csr_shares_the_matrix_and_expands_ids_on_demand():
    m = _matrix()
    data = torchmf.Interactions.from_csr(m, implicit=True)
    indptr, items, values = data.row_major()
    assert indptr is m.indptr and items is m.indices and np.shares_memory(values, m.data)
    coo = m.tocoo()
    assert len(data) == m.nnz
    np.testing.assert_array_equal(data.users, coo.row)
    np.testing.assert_array_equal(data.items, coo.col)
    assert data.users.dtype == data.items.dtype == np.int64


def test_compact_of_csr_data_matches_the_coo_path():
    m = _matrix(1)
    data = torchmf.Interactions.from_csr(m, implicit=True)
    coo = m.tocoo()
    ref = torchmf.Interactions(coo.row, coo.col, coo.data, data.user_map, data.item_map, implicit=True).compact()
    got = data.compact()
    assert got._users is None  # still CSR: nothing expanded
    np.testing.assert_array_equal(got.users, ref.users)
    np.testing.assert_array_equal(got.items, ref.items)
    np.testing.assert_array_equal(got.values, ref.values)
    assert list(got.user_map.raw(np.arange(got.n_users))) == list(ref.user_map.raw(np.arange(ref.n_users)))
    assert list(got.item_map.raw(np.arange(got.n_items))) == list(ref.item_map.raw(np.arange(ref.n_items)))
    assert got.compact() is got


def test_csr_transpose_is_scipys_transpose():
    m = _matrix(2)
    indptr, rows, order = csr_transpose(m.indptr, m.indices, m.shape[1])
    t = m.T.tocsr()
    t.sort_indices()
    np.testing.assert_array_equal(indptr, t.indptr)
    np.testing.assert_array_equal(rows, t.indices)
    np.testing.assert_array_equal(m.data[order], t.data)


@pytest.mark.parametrize("with_order", [False, True])
def test_ragged_csr_fills_the_layout_ragged_layout_builds(monkeypatch, with_order):
    monkeypatch.setattr(ragged_module, "_FILL_BLOCK", 50)  # many fill blocks on small data
    m = _matrix(3)
    if with_order:  # the item side: the transpose's pattern, values read through the positions
        indptr, cols, order = csr_transpose(m.indptr, m.indices, m.shape[1])
        n_cols, vals = m.shape[0], m.data
    else:
        indptr, cols, order, n_cols, vals = m.indptr, m.indices, None, m.shape[1], m.data

    def conf(v: np.ndarray) -> np.ndarray:
        return confidence(v, 0.7, "log", 2.0)

    ref = ragged_layout(None, cols, conf(vals if order is None else vals[order]), len(indptr) - 1, n_cols,
                        max_elements=200, csr=(indptr, None))
    got = ragged_csr(indptr, cols, vals, n_cols, max_elements=200, order=order, vals_map=conf,
                     cols_dtype=np.int32)
    for name in ("rows", "counts", "row_bounds", "entry_bounds", "widths", "vals"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(got.cols, ref.cols)
    assert got.cols.dtype == np.int32 and got.vals.dtype == np.float32  # log confidences: not float16 numbers


def test_ragged_csr_stores_float16_only_when_exact():
    m = _matrix(4)
    ones = np.ones(m.nnz, dtype=np.float32)
    half = ragged_csr(m.indptr, m.indices, ones, m.shape[1], vals_map=lambda v: 1 + 0.5 * v, half_if_exact=True)
    assert half.vals.dtype == np.float16 and set(np.unique(half.vals)) == {0.0, 1.5}
    third = ragged_csr(m.indptr, m.indices, ones, m.shape[1], vals_map=lambda v: (1 + v / 3).astype(np.float32),
                       half_if_exact=True)
    assert third.vals.dtype == np.float32  # 5/3 is no float16 number


@pytest.mark.parametrize("max_copy_bytes", [0, 1 << 20])
def test_padded_gather_is_a_gather_from_the_table_with_a_zero_row(max_copy_bytes):
    rng = np.random.default_rng(5)
    other = torch.tensor(rng.normal(size=(7, 3)), dtype=torch.float32)
    cols = torch.tensor([0, 7, 3, 7, 6], dtype=torch.int32)  # 7: padding
    ref = torch.cat([other, other.new_zeros(1, 3)])[cols]
    assert torch.equal(padded_gather(other, max_copy_bytes)(cols, torch.full((5, 3), 9.0)), ref)


@pytest.mark.parametrize("binary", [True, False])
def test_fit_from_csr_equals_fit_from_arrays(binary):
    """The CSR path (shared arrays, transposed item side, float16 binary confidences) changes no number."""
    m = _matrix(6)
    if binary:
        m.data[:] = 1.0
    coo = m.tocoo()
    csr = torchmf.Interactions.from_csr(m, implicit=True)
    # the same pairs and id maps stored as COO arrays, in scrambled order: the path every other input takes
    perm = np.random.default_rng(7).permutation(m.nnz)
    arrays = torchmf.Interactions(coo.row[perm], coo.col[perm], coo.data[perm], csr.user_map, csr.item_map,
                                  implicit=True)
    kw = dict(loss="ials", factors=8, epochs=2, device="cpu", verbose=False)
    a = torchmf.MatrixFactorization(**kw).fit(csr)
    b = torchmf.MatrixFactorization(**kw).fit(arrays)
    assert np.array_equal(a.user_factors, b.user_factors) and np.array_equal(a.item_factors, b.item_factors)
    assert [h["train_loss"] for h in a.history_] == [h["train_loss"] for h in b.history_]
    assert np.array_equal(a.seen_indices_, b.seen_indices_) and np.array_equal(a.seen_indptr_, b.seen_indptr_)


def test_fitted_model_does_not_share_the_callers_matrix():
    """The fit reads a from_csr matrix in place; the model's seen index is its own copy afterwards."""
    m = _matrix(6)
    model = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=1, device="cpu", verbose=False)
    model.fit(torchmf.Interactions.from_csr(m, implicit=True))
    before = model.seen_indices_.copy(), model.seen_values_.copy()
    assert not np.shares_memory(model.seen_indices_, m.indices)
    assert not np.shares_memory(model.seen_values_, m.data)
    m.indices[:] = 0  # the caller reuses its arrays
    m.data[:] = 7.0
    assert np.array_equal(model.seen_indices_, before[0]) and np.array_equal(model.seen_values_, before[1])


def test_binary_seen_values_are_one_number_and_the_model_still_saves_updates_and_filters(tmp_path):
    """Binary from_csr data: the seen values are one float broadcast (no pair-sized copy), same behaviour."""
    m = _matrix(6)
    m.data[:] = 1.0
    model = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=1, device="cpu", verbose=False)
    model.fit(torchmf.Interactions.from_csr(m, implicit=True))
    assert model.seen_values_.strides == (0,) and len(model.seen_values_) == m.nnz  # a view of one number
    assert not np.shares_memory(model.seen_values_, m.data)
    m.data[:] = 7.0  # the caller's matrix changes: the model's seen values do not
    assert (model.seen_values_ == 1.0).all()
    user = model.user_map.raw(np.array([0]))[0]
    seen = set(model.item_map.raw(m.indices[m.indptr[0] : m.indptr[1]]).tolist())
    assert not seen & set(model.recommend(user, k=10)["item"].tolist())
    model.save(tmp_path / "m")
    back = torchmf.load(tmp_path / "m", device="cpu")
    assert np.array_equal(back.seen_values_, np.ones(m.nnz, np.float32))
    new_item = model.item_map.raw(np.array([1]))[0]
    new_user = "someone new"
    model.partial_fit(torchmf.Interactions.from_arrays([new_user, user], [new_item, new_item]))  # builds new arrays
    assert model.seen_values_.strides != (0,) and len(model.seen_values_) == m.nnz + 1 + (new_item not in seen)
    assert new_item in set(model.item_map.raw(model.seen_items(model.user_map.index(new_user))).tolist())


def test_large_value_checks_go_by_blocks_with_the_same_message(monkeypatch):
    monkeypatch.setattr(checks_module, "_CHECK_BLOCK", 4)
    values = np.ones(20, dtype=np.float32)
    checks_module.check_values(values, lambda pos: f"entry {pos}")  # clean: passes block by block
    values[13], values[17] = 1e13, np.nan  # the non-finite one is named first, as without blocks
    with pytest.raises(DataError, match="entry 17: value nan is not finite"):
        checks_module.check_values(values, lambda pos: f"entry {pos}")


def test_rows_longer_than_a_chunk_share_one_block_and_give_the_same_bits(monkeypatch):
    """Chunks over the chunk limit (single long rows) are solved one at a time in a shared block: same numbers."""
    from torchmf import device as device_module
    from torchmf.solvers import ials as ials_module
    from torchmf.solvers import ials_layout
    from torchmf.solvers.ials import IALSSettings, ials_half_sweep, ials_side

    rng = np.random.default_rng(8)
    n_u, n_i, k = 300, 120, 4
    mask = rng.random((n_u, n_i)) < rng.uniform(0.01, 0.9, (n_u, 1))  # a few rows of ~100 pairs
    u, i = np.nonzero(mask)
    s = IALSSettings(reg=0.05, reg_exponent=1.0, unobserved_weight=0.2, cg_steps=3)
    for module in (ials_layout, ials_module):
        monkeypatch.setattr(module, "MIN_CHUNK_ENTRIES", 32)
    monkeypatch.setattr(device_module, "_CHUNK_BYTES_CPU", 32 * 4 * k)  # chunks of 32 slots: long rows exceed them
    side = ials_side(u, i, np.ones(len(u), np.float32) * 2, n_u, n_i, k, torch.device("cpu"), s, layout="gathered")
    assert sum(c.cols.numel() > 32 for c in side.chunks) >= 3
    g = torch.Generator().manual_seed(0)
    P0, Q = torch.randn(n_u, k, generator=g), torch.randn(n_i, k, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            P = P0.clone()
            results.append((P, ials_half_sweep(side, P, Q, s, with_loss=True)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
