"""Entry point of the ``torchmf`` command: parser, logging and error handling.

Each command lives in its own module (``train``, ``query``, ``tune``, ``demo``)
and registers a sub-parser whose ``func`` runs it. User errors (bad files,
unknown ids, bad options) print one ``torchmf: error: ...`` line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 2

_EPILOG = """\
commands take --help, e.g. 'torchmf train --help'.

quick start:
  torchmf demo                                   # a tour on bundled demo data
  torchmf train ratings.csv -o model --validation 0.2
  torchmf recommend model --user 1 -k 10
"""


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """--debug and -v, accepted before or after the command name."""
    p = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    g = p.add_argument_group("global options")
    g.add_argument("--debug", action="store_true", default=default or False,
                   help="show the full traceback on errors")
    g.add_argument("-v", "--verbose", action="count", default=default or 0,
                   help="log progress (-v: info, -vv: debug)")
    return p


def build_parser(options: bool = True) -> argparse.ArgumentParser:
    """The ``torchmf`` parser; ``options=False`` leaves out the hyperparameter options (they need torch),
    enough for the top-level ``--help`` and ``--version``."""
    from torchmf.cli import common, demo, explore, index, query, serve, train, tune
    from torchmf.version import __version__

    common.HYPERPARAMETER_OPTIONS = options
    parser = argparse.ArgumentParser(
        prog="torchmf",
        description="Matrix-factorization recommenders on PyTorch: train, evaluate, tune and query models.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"torchmf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parents = [_global_options(suppress=True)]
    train.add_parser(sub, parents)
    query.add_parsers(sub, parents)
    tune.add_parsers(sub, parents)
    demo.add_parser(sub, parents)
    index.add_parser(sub, parents)
    explore.add_parsers(sub, parents)
    serve.add_parser(sub, parents)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("torchmf: %(levelname)s: %(message)s"))
    root = logging.getLogger("torchmf")
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.StreamHandler)] + [handler]
    root.setLevel(level)
    root.propagate = False
    # per-epoch progress lines (written when stderr is not a terminal; --no-progress turns them off)
    logging.getLogger("torchmf.training.monitor").setLevel(min(level, logging.INFO))


def _message(exc: BaseException) -> str:
    """One line naming the problem."""
    if isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__ and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror.lower()}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from torchmf.cli.common import CLIError
    from torchmf.errors import TorchMFError

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # keep output and log lines in order
    argv = sys.argv[1:] if argv is None else list(argv)
    # only a command needs its full options: `torchmf --help` stays fast and does not import torch
    wants_command = any(not a.startswith("-") for a in argv)
    parser = build_parser(options=wants_command)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("torchmf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `torchmf recommend ... | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, TorchMFError, ValueError, KeyError, OSError) as exc:
        if args.debug:
            raise
        print(f"torchmf: error: {_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
