"""Entry point of the ``torchmf`` command (commands arrive with the CLI issue)."""

from __future__ import annotations

import argparse
import sys

import torchmf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchmf", description="Matrix factorization recommenders on PyTorch.")
    parser.add_argument("--version", action="version", version=f"torchmf {torchmf.__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
