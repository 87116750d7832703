"""``python -m torchmf``: the command line (same as the ``torchmf`` command)."""

import sys

from torchmf.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
