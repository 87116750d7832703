"""``torchmf serve`` and ``python -m torchmf serve``: option errors in-process, one real start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_serve_support import save, train_small
from torchmf.cli.main import main
from torchmf.serve.server import bind

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    save(train_small(seed=0), path)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--item-col", "id"], "--item-col and --title-col go with --items"),
        (["--max-k", "0"], "--max-k must be positive"),
        (["--items", "missing.csv"], "missing.csv: no such file"),
    ],
)
def test_option_errors_exit_2_with_one_line(model_dir, capsys, extra, message):
    assert main(["serve", str(model_dir), "--port", "0", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("torchmf: error: ") and message in err[0]


def test_missing_model_exits_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing"), "--port", "0"]) == 2
    assert "not a torchmf model folder" in capsys.readouterr().err


def test_port_in_use_exits_2(model_dir, capsys):
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", str(model_dir), "--port", str(port)]) == 2
        assert "address already in use" in capsys.readouterr().err.lower()
    finally:
        taken.close()


def test_empty_api_key_exits_2(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("SERVE_KEY", "")
    assert main(["serve", str(model_dir), "--port", "0", "--api-key-env", "SERVE_KEY"]) == 2
    assert "SERVE_KEY is set but empty" in capsys.readouterr().err


def test_python_m_torchmf_serve_with_two_workers(model_dir):
    """A real start: logs one line with the URL, two worker processes answer, Ctrl-C-like stop."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "TORCHMF_API_KEY": "k1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchmf", "serve", str(model_dir), "--port", "0", "--workers", "2", "--watch"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stderr.readline()  # blocks until the ready line (or the process ends)
        assert line.startswith("torchmf: serving ") and " at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        # the line comes once both workers have loaded the model: they answer at once
        r = httpx.get(f"{url}/v1/recommend/3", headers={"X-API-Key": "k1"}, timeout=10)
        assert r.status_code == 200 and len(r.json()["items"]) == 10
        assert httpx.get(f"{url}/health/ready", timeout=10).json()["status"] == "ready"
        assert httpx.get(f"{url}/v1/model", timeout=5).status_code == 401  # the key came from the environment
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode is not None


def test_serve_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: torchmf serve") and "--workers" in out and "X-API-Key" in out
