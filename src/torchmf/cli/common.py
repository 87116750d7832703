"""Pieces every command shares: option groups, reading data and models, output."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CLIError",
    "add_hyperparameters",
    "add_reading_options",
    "check_k",
    "emit",
    "estimator_from_args",
    "load_model",
    "read_data",
    "read_ids",
    "resolve_id",
]


class CLIError(Exception):
    """A user error found by the command line itself; printed as one line, exit 2."""


# ---------------------------------------------------------------------- reading data
def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read a ratings file."""
    g = parser.add_argument_group("reading the data")
    g.add_argument("--sep", help=r"field separator (sniffed by default); '\t' or 'tab' for tabs, 'space' for blanks")
    g.add_argument(
        "--columns",
        metavar="NAMES",
        help="comma-separated names for a headerless file's columns, e.g. user,item,rating,timestamp",
    )
    g.add_argument("--user-col", metavar="NAME", help="column holding user ids (default: recognised by name)")
    g.add_argument("--item-col", metavar="NAME", help="column holding item ids")
    g.add_argument("--rating-col", metavar="NAME", help="column holding ratings")
    g.add_argument("--timestamp-col", metavar="NAME", help="column holding timestamps")
    g.add_argument("--implicit", action="store_true", help="ignore ratings: every row is one interaction")
    g.add_argument(
        "--duplicates",
        choices=("error", "last", "mean", "sum"),
        default="error",
        help="what to do with repeated (user, item) pairs (default: error)",
    )


def _sep(text: str | None) -> str | None:
    """``--sep`` as the reader takes it (names such as ``tab`` understood by the reader itself)."""
    from torchmf.data.readers import normalise_separator

    if text is None:
        return None
    if text == "":
        raise CLIError("--sep must not be empty")
    return normalise_separator(text)


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or any(not n for n in names):
        raise CLIError(f"--columns {text!r}: give two or more comma-separated, non-empty names (e.g. user,item,rating)")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise CLIError(f"--columns {text!r}: column name {dup!r} appears twice")
    return names


def read_data(path: str, args: argparse.Namespace) -> Any:
    """Read ``path`` into Interactions using the reading options in ``args``."""
    from torchmf.data.readers import read_ratings

    sep, columns = _sep(args.sep), _columns(args.columns)
    if columns is not None:
        _check_field_count(path, sep, columns)
    return read_ratings(
        path,
        sep=sep,
        columns=columns,
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
        implicit=args.implicit,
        duplicates=args.duplicates,
    )


def _check_field_count(path: str, sep: str | None, columns: list[str]) -> None:
    """Fail clearly when ``--columns`` names a different number of columns than the file has.

    The file's first lines and separator come from the reader's own helpers
    (decompression and sniffing included), so the count is the one the reader sees.
    """
    from torchmf.data.textfile import compression, peek_lines, separator_name, sniff_separator, split_fields
    from torchmf.errors import DataError

    p = Path(path)
    try:
        if not p.is_file() or p.suffix.lower() in (".parquet", ".pq") or compression(p) == "parquet":
            return  # the reader reports missing files and checks Parquet itself
        lines = peek_lines(p)
    except DataError:
        return  # binary data, an archive, a pipe: the reader says so
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        return
    sniffed = sniff_separator(lines)
    sep = sep or sniffed
    n = len(split_fields(first, sep))
    if n != len(columns):
        hint = f" (wrong --sep? the file looks {separator_name(sniffed)}-separated)" if sep != sniffed else ""
        raise CLIError(f"--columns names {len(columns)} columns but {path} line 1 has {n} fields{hint}")


def read_ids(path: str) -> list[str]:
    """Ids listed one per line (``-`` reads stdin); blank lines and surrounding spaces ignored."""
    if path == "-":
        text = sys.stdin.read()
    else:
        p = Path(path)
        if p.is_dir():
            raise CLIError(f"{path}: is a folder, not a file of ids")
        try:
            text = p.read_bytes().decode("utf-8-sig", errors="replace")
        except FileNotFoundError:
            raise CLIError(f"{path}: no such file") from None
    ids = [ln.strip() for ln in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise CLIError(f"{path}: no ids in the file")
    return ids


@contextlib.contextmanager
def stdin_as_file(path: str) -> Iterator[str]:
    """``path`` itself, or for ``-`` a temporary file holding stdin (the readers sniff files, not streams)."""
    if path != "-":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="torchmf-stdin-") as tmp:
        target = Path(tmp) / "stdin.csv"
        target.write_text(sys.stdin.read())
        yield str(target)


# ---------------------------------------------------------------------- models
def load_model(path: str) -> Any:
    """Load a saved model on the CPU (ModelFileError names what is wrong)."""
    from torchmf.estimator.mf import MatrixFactorization

    return MatrixFactorization.load(path, device="cpu")


def resolve_id(idmap: Any, text: str, fallback: bool = False) -> Hashable:
    """The raw id meant by ``text`` (``"1"`` finds the int 1); unknown ids raise or pass through."""
    from torchmf.errors import UnknownIdError

    try:
        return idmap.resolve(text)
    except UnknownIdError:
        if fallback:
            return text
        raise


def positive_int(text: str) -> int:
    """argparse ``type=`` for options that take a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def check_k(k: int) -> int:
    if k <= 0:
        raise CLIError(f"-k must be a positive integer, got {k}")
    return k


# ---------------------------------------------------------------------- hyperparameters
_HELP = {
    "factors": "latent dimension",
    "epochs": "epochs (SGD) or sweeps (ALS, Gibbs)",
    "solver": "training algorithm",
    "loss": "objective (mse for ratings, the others for implicit feedback)",
    "lr": "learning rate (SGD)",
    "reg": "L2 penalty on factors",
    "reg_bias": "L2 penalty on biases",
    "reg_exponent": "frequency scaling of the ALS penalty",
    "optimizer": "SGD update rule",
    "batch_size": "interactions per SGD step",
    "biases": "fit a global mean and user/item biases",
    "init_std": "standard deviation of the initial factors",
    "cg_steps": "ALS conjugate-gradient steps, 0 = exact solve",
    "alpha": "iALS confidence scale (unset: chosen from the values, see --confidence)",
    "confidence": "iALS confidence of a value (unset: log scaled to the median for heavy-tailed counts, else linear)",
    "rank_by": "what a rating model's lists rank by: an iALS component on the same pairs, or the predicted rating",
    "confidence_eps": "iALS log-confidence epsilon",
    "unobserved_weight": "iALS weight of unobserved pairs",
    "negatives": "sampled negatives per positive",
    "negative_sampling": "how negatives are drawn",
    "early_stopping": "with validation: stop after N epochs without improvement",
    "samples": "Gibbs: posterior samples kept and averaged",
    "burn_in": "Gibbs: sweeps discarded before the kept samples",
    "thin": "Gibbs: sweeps per kept sample",
    "implicit_features": "Gibbs: add each user's rated items and each item's raters as features",
    "device": "auto (CUDA when available), cpu, cuda or cuda:N",
    "seed": "random seed",
}
# where the valid values of a string hyperparameter come from
_CHOICES = {"solver": "solvers.solver_names", "loss": "solvers.losses", "optimizer": "OPTIMIZERS",
            "confidence": "CONFIDENCE", "negative_sampling": "SAMPLING", "rank_by": "RANK_BY"}
_METAVAR = {int: "N", float: "X", str: "NAME"}


def _hp_specs() -> list[tuple[str, type, Any]]:
    """(name, type, default) of every MatrixFactorization hyperparameter, read from its Params."""
    from dataclasses import MISSING, fields

    from torchmf.estimator.params import Params

    out = []
    for f in fields(Params):
        if f.name == "verbose":  # the CLI's --progress
            continue
        ann = str(f.type)
        typ = bool if "bool" in ann else int if "int" in ann else float if "float" in ann else str
        out.append((f.name, typ, None if f.default is MISSING else f.default))
    return out


# False while building the parser for the top-level --help (see main.build_parser)
HYPERPARAMETER_OPTIONS = True


def add_hyperparameters(parser: argparse.ArgumentParser) -> None:
    """Options mirroring MatrixFactorization's hyperparameters (unset = library default).

    Values are checked by the library, so a bad one is reported as a one-line error.
    """
    if not HYPERPARAMETER_OPTIONS:
        return
    from torchmf.estimator import params as params_module

    g = parser.add_argument_group("model hyperparameters (unset: the library's default)")
    for name, typ, default in _hp_specs():
        flag = "--" + name.replace("_", "-")
        text = _HELP.get(name, f"see MatrixFactorization's {name}")
        source = _CHOICES.get(name, "")
        choices = getattr(params_module.solvers, source.split(".")[1])() if "." in source else getattr(
            params_module, source, None
        )
        if choices:
            text += ": " + ", ".join(sorted(choices) if isinstance(choices, dict) else choices)
        if default is not None:
            text += f" (default {default})"
        elif name == "early_stopping":
            text += " (default off)"
        elif name == "batch_size":
            text += " (default: automatic, from the data size)"
        else:
            text += f" (default: {per_loss_defaults(name)})"
        if typ is bool:
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(flag, dest=name, type=typ, metavar=_METAVAR[typ], help=text)
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress: a bar on a terminal, one line per epoch otherwise (default: on)",
    )


def per_loss_defaults(name: str) -> str:
    """The default of hyperparameter ``name`` for each loss/solver, e.g. ``0.35 (mse/als), 0.03 (ials)``."""
    from torchmf import solvers

    if name == "solver":
        by_solver: dict[str, list[str]] = {}
        for loss in solvers.losses():
            by_solver.setdefault(solvers.default_solver(loss), []).append(loss)
        return ", ".join(f"{s} ({', '.join(losses)})" for s, losses in by_solver.items())
    if name == "rank_by":
        rating = [lo for lo in solvers.losses() if not solvers.is_ranking_loss(lo)]
        return f"interactions ({', '.join(rating)}), scores (the ranking losses)"
    groups: dict[str, list[str]] = {}
    for loss in solvers.losses():
        names = solvers.solvers_for(loss)
        for solver in names:
            value = solvers.get_solver(loss, solver).defaults[loss].get(name)
            if value is not None:
                groups.setdefault(repr(value) if isinstance(value, str) else str(value), []).append(
                    loss if len(names) == 1 else f"{loss}/{solver}"
                )
    return ", ".join(f"{v} ({', '.join(where)})" for v, where in groups.items()) or "not used"


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters given on the command line, by MatrixFactorization name."""
    out = {name: getattr(args, name) for name, _, _ in _hp_specs() if getattr(args, name, None) is not None}
    progress = getattr(args, "progress", None)
    out["verbose"] = True if progress is None else progress  # a bar on a terminal, one line per epoch elsewhere
    return out


def estimator_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """A MatrixFactorization from the command line (ValueError names a bad value)."""
    from torchmf.estimator.mf import MatrixFactorization

    return MatrixFactorization(**{**hyperparameters(args), **extra})


# ---------------------------------------------------------------------- output
def add_format(parser: argparse.ArgumentParser, choices: Sequence[str] = ("table", "csv", "json")) -> None:
    parser.add_argument("--format", choices=choices, default="table", help="output format (default: table)")


def plain(v: Any) -> Any:
    """Numpy scalars to Python; floats shortened to 6 significant digits; NaN to None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if not math.isfinite(v) else float(f"{v:.6g}")
    return v


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def emit(df: pd.DataFrame, fmt: str, out: str | None = None) -> None:
    """Print (or write to ``out``) a frame as an aligned table, CSV or JSON."""
    if fmt == "json":
        text = json.dumps(records(df), indent=2) + "\n"
    elif fmt == "csv":
        text = df.to_csv(index=False, float_format="%.6g")
    else:
        text = (df.to_string(index=False, float_format=lambda x: f"{x:.4f}") if len(df) else "(no rows)") + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {len(df)} rows to {out}", file=sys.stderr)


def metrics_table(metrics: dict[str, Any]) -> str:
    """``name  value`` lines, aligned."""
    width = max((len(str(k)) for k in metrics), default=0)
    lines = []
    for k, v in metrics.items():
        v = plain(v)
        lines.append(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(lines)
