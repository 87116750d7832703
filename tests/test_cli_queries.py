"""CLI features a new user expects (issue 13): visitors, candidates, titles, stdin pairs, split, explain,
--threshold, and `train --validation` refitting on all the data."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

import torchmf as tm
from test_cli import FAST, assert_user_error, ok, torchmf, write_ratings


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("queries")
    ratings = write_ratings(work / "ratings.csv")
    ok(torchmf("train", ratings, "-o", work / "model", *FAST))
    titles = work / "movies.csv"
    titles.write_text("movieId,title\n" + "".join(f"{i},Film {i}\n" for i in range(1, 26)))
    return work, ratings, work / "model"


def test_recommend_for_a_visitor_from_a_file(setup) -> None:
    work, _, model = setup
    visitor = work / "visitor.csv"
    visitor.write_text("1,5\n2,4\n3\n")
    out = json.loads(ok(torchmf("recommend", model, "--interactions", visitor, "-k", "4", "--format", "json")))
    items = [row["item"] for row in out]
    assert len(items) == 4 and not {1, 2, 3} & set(items)
    assert len(tm.load(model).user_map) == 30  # nothing stored


def test_recommend_candidates_and_titles(setup) -> None:
    work, _, model = setup
    cands = work / "cands.txt"
    cands.write_text("4\n5\n6\n7\n8\n9\n")
    out = json.loads(ok(torchmf("recommend", model, "--user", "1", "-k", "3", "--candidates", cands,
                                "--items", work / "movies.csv", "--format", "json")))
    assert {row["item"] for row in out} <= {4, 5, 6, 7, 8, 9}
    assert all(row["title"] == f"Film {row['item']}" for row in out)
    table = ok(torchmf("similar", model, "--item", "1", "-k", "2", "--items", work / "movies.csv"))
    assert "title" in table and "Film " in table


def test_titles_file_without_recognisable_columns(setup) -> None:
    work, _, model = setup
    bad = work / "bad.csv"
    bad.write_text("a,b\n1,x\n")
    assert_user_error(torchmf("similar", model, "--item", "1", "--items", bad), "bad.csv", "columns")


def test_predict_pairs_from_stdin(setup, monkeypatch) -> None:
    _, _, model = setup
    monkeypatch.setattr(sys, "stdin", io.StringIO("user,item\n1,2\n3,4\n"))
    out = ok(torchmf("predict", model, "--pairs", "-"))
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["user", "item", "prediction"] and len(frame) == 2


def test_evaluate_threshold(setup) -> None:
    work, ratings, _ = setup
    ok(torchmf("split", ratings, "--test", "0.25", "-o", work / "thr"))
    ok(torchmf("train", work / "thr" / "train.csv", "-o", work / "thr" / "model", *FAST))
    args = ("evaluate", work / "thr" / "model", work / "thr" / "test.csv", "--format", "json")
    every = json.loads(ok(torchmf(*args)))
    liked = json.loads(ok(torchmf(*args, "--threshold", "4")))
    assert liked["users_evaluated"] <= every["users_evaluated"]
    assert liked["ndcg@10"] != every["ndcg@10"]


def test_split_writes_train_and_test_files(setup) -> None:
    work, ratings, _ = setup
    ok(torchmf("split", ratings, "--how", "user", "--test", "0.25", "-o", work / "splits"))
    train = pd.read_csv(work / "splits" / "train.csv")
    test = pd.read_csv(work / "splits" / "test.csv")
    assert len(train) + len(test) == 30 * 12 and list(train.columns[:3]) == ["user", "item", "rating"]
    # every user keeps interactions in train (user split), and the files read back as ratings
    assert set(test["user"]) <= set(train["user"])
    assert tm.read_ratings(work / "splits" / "train.csv").implicit is False
    assert_user_error(torchmf("split", ratings, "--test", "1.5", "-o", work / "x"), "--test")


def test_explain_command(setup) -> None:
    _, _, model = setup
    out = json.loads(ok(torchmf("explain", model, "--user", "1", "--item", "5", "-k", "3", "--format", "json")))
    assert len(out) == 3 and {"item", "contribution", "value"} <= set(out[0])


def test_train_validation_refits_on_all_data(setup) -> None:
    work, ratings, _ = setup
    res = torchmf("train", ratings, "-o", work / "refit", "--validation", "0.2", *FAST)
    out = ok(res)
    assert "refitted on all 360 interactions" in out
    model = tm.load(work / "refit")
    assert len(model.seen_indices_) == 360  # the saved model saw every interaction
    info = json.loads(ok(torchmf("info", work / "refit", "--format", "json")))
    printed = next(line for line in out.splitlines() if line.strip().startswith("rmse"))
    assert f"{info['model']['validation rmse']}"[:5] in printed  # one number for validation RMSE
    no_refit = torchmf("train", ratings, "-o", work / "norefit", "--validation", "0.2", "--no-refit", *FAST)
    assert "refitted" not in ok(no_refit) and len(tm.load(work / "norefit").seen_indices_) < 360
