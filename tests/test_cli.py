"""The ``torchmf`` command line on tiny generated files.

Commands run in-process through ``main(argv)`` with stdout/stderr captured
(a subprocess would pay seconds of torch import per call); a few smoke tests
at the end run the real ``torchmf`` entry points as subprocesses.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

COMMANDS = [
    "train", "predict", "recommend", "similar", "info", "evaluate", "cv", "tune", "demo", "index", "split", "explain",
]
FAST = ["--factors", "4", "--epochs", "2"]


@contextlib.contextmanager
def _cwd(path: Path | None):
    old = os.getcwd()
    if path is not None:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def torchmf(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``torchmf ARGS`` in-process (``main(argv)``); stdout, stderr and the exit status as a subprocess would."""
    from torchmf.cli.main import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    os.environ["COLUMNS"] = "100"  # argparse wraps help to this width
    with _cwd(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["torchmf", *argv], code, out.getvalue(), err.getvalue())


def torchmf_subprocess(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real console entry point, for the few smoke tests that must see a separate process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "torchmf.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def run_many(cases: dict[str, list]) -> dict[str, subprocess.CompletedProcess]:
    return {name: torchmf(*args) for name, args in cases.items()}


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr
    return res.stdout


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one stderr line 'torchmf: error: ...' naming the problem, no traceback."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("torchmf: error: "), lines[0]
    for frag in fragments:
        assert frag.lower() in lines[0].lower(), (frag, lines[0])


# ---------------------------------------------------------------------- data
def write_ratings(path: Path, n_users: int = 30, n_items: int = 25, per_user: int = 12, seed: int = 0) -> Path:
    """Headerless ``user,item,rating,timestamp`` with int ids from 1 and low-rank 1-5 stars."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        for u in range(n_users):
            for i in rng.choice(n_items, per_user, replace=False):
                stars = int(np.clip(np.rint(3 + p[u] @ q[i] + rng.normal(0, 0.3)), 1, 5))
                w.writerow([u + 1, i + 1, stars, 1_600_000_000 + int(rng.integers(10**6))])
    return path


def rows_of(path: Path) -> list[list[str]]:
    return [r for r in csv.reader(path.open()) if r]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def ratings(work: Path) -> Path:
    return write_ratings(work / "ratings.csv")


@pytest.fixture(scope="module")
def trained(work: Path, ratings: Path) -> tuple[Path, subprocess.CompletedProcess]:
    model = work / "model"
    res = torchmf("train", ratings, "-o", model, "--validation", "0.2", "--plot", work / "curves.png", *FAST)
    return model, res


@pytest.fixture(scope="module")
def model(trained: tuple[Path, subprocess.CompletedProcess]) -> Path:
    ok(trained[1])
    return trained[0]


# ---------------------------------------------------------------------- help
@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    return run_many({"": ["--help"], **{c: [c, "--help"] for c in COMMANDS}})


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help(helps: dict[str, subprocess.CompletedProcess], command: str) -> None:
    out = ok(helps[command])
    assert out.startswith("usage: torchmf")
    if command:
        assert f"torchmf {command}" in out and "--debug" in out
    else:
        assert all(c in out for c in COMMANDS)


def test_version_and_no_command() -> None:
    assert ok(torchmf("--version")).startswith("torchmf ")


def test_entry_point_smoke(model: Path) -> None:
    """The real process: help and one query, exit codes and streams as a shell sees them."""
    assert ok(torchmf_subprocess("--help")).startswith("usage: torchmf")
    assert_user_error(torchmf_subprocess("recommend", model, "--user", "no-such-user"), "no-such-user")


# ---------------------------------------------------------------------- train
def test_train_reports_validation_and_saves(trained: tuple[Path, subprocess.CompletedProcess], work: Path) -> None:
    model, res = trained
    out = ok(res)
    assert "read 360 explicit interactions" in out
    assert "validation metrics" in out
    for name in ("rmse", "mae", "ndcg@10", "recall@10"):
        assert name in out
    assert f"model saved to {model}" in out
    assert (model / "torchmf.json").is_file() and len(list(model.glob("weights-*.safetensors"))) == 1
    assert f"learning curves written to {work / 'curves.png'}" in out
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_train_header_file_with_named_columns(tmp_path: Path, ratings: Path) -> None:
    src = tmp_path / "plays.tsv"
    lines = ["listener\tsong\tstars"] + ["\t".join(r[:3]) for r in rows_of(ratings)]
    src.write_text("\n".join(lines) + "\n")
    res = torchmf("train", src, "-o", tmp_path / "m", "--user-col", "listener", "--item-col", "song",
                  "--rating-col", "stars", *FAST, "--solver", "sgd", "--lr", "0.02", "--batch-size", "64", "--progress")
    out = ok(res)
    assert "360 explicit" in out and "SGD" in out
    assert "torchmf sgd" in res.stderr  # the library's progress bar


def test_train_columns_sep_implicit_and_duplicates(tmp_path: Path, ratings: Path) -> None:
    rows = rows_of(ratings)
    src = tmp_path / "swapped.txt"
    # item;user;rating with one repeated pair: needs --columns, --sep and a duplicates policy
    lines = [f"{r[1]};{r[0]};{r[2]}" for r in rows] + [f"{rows[0][1]};{rows[0][0]};1"]
    src.write_text("\n".join(lines) + "\n")
    common = ["--columns", "item,user,rating", "--sep", ";", *FAST]
    assert_user_error(torchmf("train", src, "-o", tmp_path / "m", *common), "repeated")
    out = ok(torchmf("train", src, "-o", tmp_path / "m", *common, "--duplicates", "mean", "--implicit"))
    assert "360 implicit interactions" in out
    info = json.loads(ok(torchmf("info", tmp_path / "m", "--format", "json")))
    assert info["model"]["feedback"] == "implicit"


# ---------------------------------------------------------------------- predict
def test_predict_one_pair_with_int_ids(model: Path, ratings: Path) -> None:
    user, item = rows_of(ratings)[0][:2]
    value = float(ok(torchmf("predict", model, "--user", user, "--item", item)).strip())
    assert 1.0 <= value <= 5.0


def test_predict_pairs_file(model: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,3\n2,5\n999,3\n")
    assert_user_error(torchmf("predict", model, "--pairs", pairs), "unknown user", "999")
    out = tmp_path / "pred.csv"
    res = torchmf("predict", model, "--pairs", pairs, "--unknown", "fallback", "-o", out)
    ok(res)
    rows = rows_of(out)
    assert rows[0] == ["user", "item", "prediction"]
    assert [r[:2] for r in rows[1:]] == [["1", "3"], ["2", "5"], ["999", "3"]]
    assert all(1.0 <= float(r[2]) <= 5.0 for r in rows[1:])
    assert "wrote 3 rows" in res.stderr


# ---------------------------------------------------------------------- recommend / similar
def test_recommend_one_user_formats(model: Path) -> None:
    import torchmf as tm

    loaded = tm.load(model)
    seen = set(loaded.item_map.raw(loaded.seen_items(loaded.user_map.index(1))).tolist())
    recs = json.loads(ok(torchmf("recommend", model, "--user", "1", "-k", "5", "--format", "json")))
    assert len(recs) == 5 and all(set(r) == {"item", "score"} for r in recs)
    assert seen and not {r["item"] for r in recs} & seen  # int ids matched; nothing rated in training
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    table = ok(torchmf("recommend", model, "--user", "1", "-k", "3"))
    assert table.split("\n")[0].split() == ["rank", "item", "score"] and len(table.strip().split("\n")) == 4
    rows = list(csv.reader(ok(torchmf("recommend", model, "--user", "1", "-k", "25", "--format", "csv",
                                      "--include-seen")).splitlines()))
    assert rows[0] == ["rank", "item", "score"] and len(rows) == 26  # all 25 items, seen ones included


def test_recommend_users_file(model: Path, tmp_path: Path) -> None:
    ids = tmp_path / "users.txt"
    ids.write_text("1\n\n 2 \n")
    recs = json.loads(ok(torchmf("recommend", model, "--users", ids, "-k", "2", "--format", "json")))
    assert [(r["user"], r["rank"]) for r in recs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(set(r) == {"user", "rank", "item", "score"} for r in recs)


def test_similar(model: Path) -> None:
    sims = json.loads(ok(torchmf("similar", model, "--item", "3", "-k", "4", "--format", "json")))
    assert len(sims) == 4 and all(-1.0 <= s["score"] <= 1.0 and s["item"] != 3 for s in sims)
    assert "rank" in ok(torchmf("similar", model, "--item", "3", "-k", "2"))


# ---------------------------------------------------------------------- info / evaluate
def test_info(model: Path) -> None:
    out = ok(torchmf("info", model))
    for text in ("users", "30", "items", "rating range", "1.0 .. 5.0", "factors", "validation rmse", "then refit"):
        assert text in out
    data = json.loads(ok(torchmf("info", model, "--format", "json")))
    assert data["model"]["users"] == 30 and data["hyperparameters"]["factors"] == 4
    assert len(data["history"]) == data["model"]["epochs run"]


def test_evaluate(model: Path, work: Path, ratings: Path) -> None:
    test = write_ratings(work / "test.csv", per_user=4, seed=1)
    metrics = json.loads(ok(torchmf("evaluate", model, test, "-k", "5", "--train", ratings, "--format", "json")))
    for name in ("rmse", "mae", "precision@5", "recall@5", "ndcg@5", "map@5", "mrr@5", "hit_rate@5", "coverage@5"):
        assert name in metrics
    assert "ndcg@10" in ok(torchmf("evaluate", model, test))


# ---------------------------------------------------------------------- cv / tune
def test_cv(ratings: Path, tmp_path: Path) -> None:
    plot = tmp_path / "cv.png"
    res = torchmf("cv", ratings, "--folds", "2", "-k", "5", "--format", "json", "--plot", plot, *FAST)
    data = json.loads(ok(res).split("\n", 1)[1].rsplit("cross-validation plot", 1)[0])
    assert len(data["folds"]) == 2 and "rmse" in data["mean"] and "ndcg@5" in data["std"]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_tune_grid_saves_best(ratings: Path, tmp_path: Path) -> None:
    out = ok(torchmf("tune", ratings, "--grid", "factors=2,4", "reg=0.1,0.5", "--epochs", "2",
                     "-o", tmp_path / "best"))
    assert "4 grid candidates" in out and "best (rmse = " in out and "saved to" in out
    info = json.loads(ok(torchmf("info", tmp_path / "best", "--format", "json")))
    assert info["hyperparameters"]["factors"] in (2, 4)


def test_tune_optuna(ratings: Path) -> None:
    res = torchmf("tune", ratings, "--optuna", "--trials", "2", "--space", "factors=2:8", "--epochs", "2")
    try:
        import optuna  # noqa: F401
    except ImportError:
        assert_user_error(res, "optuna")
    else:
        assert "2 Optuna trials" in ok(res)


# ---------------------------------------------------------------------- user errors
@pytest.fixture(scope="module")
def bad_files(work: Path) -> dict[str, Path]:
    files = {
        "short_row": "1,2,3\n4,5\n",
        "bad_rating": "1,2,3\n4,5,lots\n",
    }
    out = {}
    for name, text in files.items():
        out[name] = work / f"{name}.csv"
        out[name].write_text(text)
    return out


ERROR_CASES = {
    # name: (args with {data}, {model}, {<bad file>} placeholders, fragments the message must name)
    "missing data file": (["train", "{work}/nope.csv", "-o", "{work}/m"], ["nope.csv", "no such file"]),
    "row with too few fields": (["train", "{short_row}", "-o", "{work}/m"], ["line 2", "fields"]),
    "rating not a number": (["train", "{bad_rating}", "-o", "{work}/m"], ["'lots'", "not a number"]),
    "unknown user": (["recommend", "{model}", "--user", "31"], ["unknown user", "31"]),
    "unknown user in file": (["recommend", "{model}", "--users", "{work}/users_bad.txt"], ["unknown user", "zz"]),
    "unknown item": (["similar", "{model}", "--item", "abc"], ["unknown item", "abc"]),
    "k zero": (["recommend", "{model}", "--user", "1", "-k", "0"], ["-k", "positive"]),
    "k negative similar": (["similar", "{model}", "--item", "1", "-k", "-3"], ["-k", "positive"]),
    "model folder missing": (["info", "{work}/no_model"], ["no_model", "not a torchmf model"]),
    "folder not a model": (["recommend", "{work}", "--user", "1"], ["not a torchmf model"]),
    "factors zero": (["train", "{data}", "-o", "{work}/m", "--factors", "0"], ["factors", "positive"]),
    "bad solver": (["train", "{data}", "-o", "{work}/m", "--solver", "newton"], ["solver", "newton"]),
    "columns count": (["train", "{data}", "-o", "{work}/m", "--columns", "user,item"], ["--columns", "4 fields"]),
    "columns twice": (["train", "{data}", "-o", "{work}/m", "--columns", "user,item,item,t"], ["twice"]),
    "columns no user": (["train", "{data}", "-o", "{work}/m", "--columns", "a,item,rating,t"], ["no user column"]),
    "user col missing": (["train", "{data}", "-o", "{work}/m", "--user-col", "who"], ["'who'"]),
    "validation fraction": (["train", "{data}", "-o", "{work}/m", "--validation", "1.5"], ["--validation"]),
    "predict no pair": (["predict", "{model}"], ["--user", "--pairs"]),
    "grid unknown name": (["tune", "{data}", "--grid", "factorz=2"], ["factorz"]),
    "grid bad value": (["tune", "{data}", "--grid", "factors=0,4"], ["factors"]),
    "tune nothing": (["tune", "{data}"], ["--grid", "--optuna"]),
}


@pytest.fixture(scope="module")
def error_results(work: Path, ratings: Path, model: Path, bad_files: dict[str, Path]):
    (work / "users_bad.txt").write_text("1\nzz\n")
    subs = {"work": str(work), "model": str(model), "data": str(ratings), **{k: str(v) for k, v in bad_files.items()}}
    cases = {name: [a.format(**subs) for a in args] for name, (args, _) in ERROR_CASES.items()}
    return run_many(cases)


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_error(error_results: dict[str, subprocess.CompletedProcess], case: str) -> None:
    assert_user_error(error_results[case], *ERROR_CASES[case][1])


def test_debug_shows_traceback(model: Path) -> None:
    res = torchmf_subprocess("--debug", "recommend", model, "--user", "31")  # the interpreter prints the traceback
    assert res.returncode != 0 and "Traceback" in res.stderr and "UnknownIdError" in res.stderr


def test_usage_error_exits_2(model: Path) -> None:
    res = torchmf("recommend", model, "--user", "1", "--bogus")
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------- demo
def test_load_demo_is_deterministic_and_friendly() -> None:
    from torchmf.data.demo import GENRES, load_demo

    a, b = load_demo(), load_demo()
    assert np.array_equal(a.values, b.values) and a.item_map == b.item_map
    assert (a.n_users, a.n_items) == (600, 300) and not a.implicit
    assert set(np.unique(a.values)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert all(any(t.endswith(f"({g})") for g in GENRES) for t in a.item_map.ids)


def test_demo_runs_offline_quickly(tmp_path: Path) -> None:
    start = time.perf_counter()
    res = torchmf("demo", "--write-csv", tmp_path / "demo.csv", cwd=tmp_path, timeout=120)
    took = time.perf_counter() - start
    out = ok(res)
    assert took < 60, f"demo took {took:.1f} s"
    assert "top-5 recommendations" in out and "rmse" in out and "ndcg@10" in out
    assert "Where to go next" in out
    header = (tmp_path / "demo.csv").read_text().split("\n", 1)[0]
    assert header == "user,item,rating,timestamp"


def test_top_level_help_does_not_import_torch() -> None:
    """`torchmf --help` answers without paying the torch import (seconds); commands still get every option."""
    code = (
        "import contextlib, io, sys\n"
        "from torchmf.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
