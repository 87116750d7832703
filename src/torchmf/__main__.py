"""``python -m torchmf``: the command line (also what ``torchrun ... -m torchmf train ...`` runs on each rank)."""

import sys

from torchmf.cli.main import main

sys.exit(main())
