"""Distributed fit, in one process (world size 1) and its building blocks; multi-process runs are in
test_distributed_spawn.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from torchmf import MatrixFactorization, read_ratings
from torchmf.distributed import fit
from torchmf.distributed.checkpoint import latest
from torchmf.distributed.io import assign_parts, block_bounds, part_files
from torchmf.distributed.rows import choose_exchange, fetch, plan_rows
from torchmf.errors import DataError, ModelFileError


def _write_parts(folder: Path, df: pd.DataFrame, cuts: list[int], header: bool = False) -> Path:
    """Rows ``cuts[j]:cuts[j+1]`` of ``df`` into part j (tab-separated), like a data-lake folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(len(cuts) - 1):
        df.iloc[cuts[j]:cuts[j + 1]].to_csv(folder / f"part-{j:05d}.tsv", sep="\t", header=header, index=False)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000.tsv.crc").write_text("junk")
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3,000-row explicit set with text ids (as a file and as uneven parts, one empty, one header-only)."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 150, 4000)
    items = rng.integers(0, 80, 4000)
    df = pd.DataFrame({"user": [f"u{u}" for u in users], "item": items, "rating": rng.integers(1, 6, 4000)})
    df = df.drop_duplicates(["user", "item"]).iloc[:3000].reset_index(drop=True)
    root = tmp_path_factory.mktemp("small")
    df.to_csv(root / "all.tsv", sep="\t", header=False, index=False)
    parts = _write_parts(root / "parts", df, [0, 100, 100, 1900, 3000])
    (parts / "part-00009.tsv").write_text("user\titem\trating\n")  # Spark writes header-only parts
    return root / "all.tsv", parts


def test_part_files_skip_markers_and_are_dealt_in_order(small):
    _, parts = small
    names = [p.name for p in part_files(parts)]
    assert names == ["part-00000.tsv", "part-00001.tsv", "part-00002.tsv", "part-00003.tsv", "part-00009.tsv"]
    # a part goes to the rank whose equal share of the bytes holds the part's middle
    assert assign_parts([10, 0, 10, 40, 40], 2) == [[0, 1, 2, 3], [4]]
    assert assign_parts([5], 3) == [[], [0], []]


def test_block_bounds_balance_interactions():
    # degrees 8,1,1,1,1,4: halves of the 16 interactions end after id 1 (9 >= 8)
    assert block_bounds(np.array([8, 1, 1, 1, 1, 4]), 2).tolist() == [0, 1, 6]
    assert block_bounds(np.ones(10, dtype=np.int64), 4).tolist() == [0, 3, 5, 8, 10]


@pytest.mark.parametrize("exchange", ["all_gather", "all_to_all"])
@pytest.mark.parametrize("loss", ["mse", "ials"])
def test_one_rank_matches_single_process(small, loss, exchange):
    path, parts = small
    kw = dict(loss=loss, factors=6, epochs=3, verbose=False)
    ref = MatrixFactorization(**kw).fit(read_ratings(path))
    got = fit(MatrixFactorization(**kw), parts, world_size=1, exchange=exchange)
    # same ids in the same order as reading the concatenated parts at once
    assert got.user_map == ref.user_map and got.item_map == ref.item_map
    np.testing.assert_allclose(got.user_factors, ref.user_factors, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.item_factors, ref.item_factors, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.seen_indices_, ref.seen_indices_)
    assert got.history_[-1]["train_loss"] == pytest.approx(ref.history_[-1]["train_loss"], rel=1e-6)


def test_exchange_is_chosen_by_the_table_budget():
    # tables 2 (n_users + n_items) d 4 bytes = 2 * 300 * 10 * 4 = 24,000
    assert choose_exchange("auto", 100, 200, 10, budget=24_000) == "all_gather"
    assert choose_exchange("auto", 100, 200, 10, budget=23_999) == "all_to_all"
    assert choose_exchange("all_to_all", 100, 200, 10, budget=10**12) == "all_to_all"
    with pytest.raises(ValueError, match="exchange must be one of auto, all_gather, all_to_all; got 'ring'"):
        choose_exchange("ring", 100, 200, 10)
    with pytest.raises(ValueError, match="exchange must be one of"):
        fit(MatrixFactorization(epochs=1), "unused", world_size=1, exchange="ring")


def test_row_plan_remaps_to_the_sorted_needed_rows():
    cols = np.array([7, 2, 7, 5, 2], dtype=np.int64)
    plan, compact = plan_rows(cols, np.array([0, 10]), 10, torch.device("cpu"))
    assert plan.needed.tolist() == [2, 5, 7] and compact.tolist() == [2, 0, 2, 1, 0]
    table = torch.arange(10.0).unsqueeze(1)
    assert fetch(plan, table).squeeze(1).tolist() == [2.0, 5.0, 7.0]


def test_repeats_across_parts(tmp_path):
    a, b = tmp_path / "p" / "part-0.csv", tmp_path / "p" / "part-1.csv"
    a.parent.mkdir()
    a.write_text("user,item,rating\n1,10,4\n2,10,3\n")
    b.write_text("user,item,rating\n1,10,2\n2,11,5\n")
    est = MatrixFactorization(factors=2, epochs=1, verbose=False)
    with pytest.raises(DataError, match=r"repeated \(user, item\) pair \(1, 10\)"):
        fit(est, a.parent)
    got = fit(est, a.parent, duplicates="last")
    assert len(got.seen_indices_) == 3 and got.rating_range_ == (2.0, 5.0)  # 4 replaced by the later 2


def test_bad_part_names_file_and_line(tmp_path):
    folder = _write_parts(tmp_path / "p", pd.DataFrame({"u": [1, 2], "i": [3, 4], "r": [1.0, 2.0]}), [0, 1, 2])
    with open(folder / "part-00001.tsv", "a") as f:
        f.write("3\t5\tlots\n")
    with pytest.raises(DataError, match=r"part-00001.tsv: line 2\b.*column 'rating': 'lots' is not a number"):
        fit(MatrixFactorization(verbose=False), folder)
    with pytest.raises(DataError, match="no part files"):
        fit(MatrixFactorization(verbose=False), tmp_path / "p" / "..")


@pytest.mark.parametrize("exchange", ["all_gather", "all_to_all"])
def test_resume_continues_to_the_uninterrupted_result(small, tmp_path, exchange):
    _, parts = small
    kw = dict(factors=4, epochs=5, verbose=False)
    # all_to_all keeps only the rank's blocks: its checkpoints are written from them
    full = fit(MatrixFactorization(**kw), parts, output=tmp_path / "a", checkpoint_every=2, exchange=exchange)
    assert latest(tmp_path / "a.ckpt").name == "epoch-000004"
    # a resumed job starts after epoch 4 and only runs epoch 5
    again = fit(MatrixFactorization(**kw), parts, output=tmp_path / "b", checkpoint_dir=tmp_path / "a.ckpt",
                resume=True, exchange=exchange)
    np.testing.assert_array_equal(again.user_factors, full.user_factors)
    assert again.history_ == full.history_
    with pytest.raises(ModelFileError, match="factors=4, now 5"):
        fit(MatrixFactorization(factors=5, epochs=5, verbose=False), parts, output=tmp_path / "c",
            checkpoint_dir=tmp_path / "a.ckpt", resume=True)
    with pytest.raises(ModelFileError, match="exists"):
        fit(MatrixFactorization(**kw), parts, output=tmp_path / "a")

