"""torchmf beside whichever peers are installed, on the same ML-100k splits: one command for both protocols.

    python benchmarks/compare.py            # explicit (u1..u5) then implicit (per-user 80/20)

Runs ``explicit.py --folds 1 2 3 4 5`` (Surprise SVD / SVD++ / BaselineOnly, cornac MF) and
``implicit_peers.py`` (implicit ALS / BPR, LightFM WARP, cornac BPR, popularity); each prints its
markdown table. Peers are benchmark-only extras, never torchmf dependencies:
``pip install scikit-surprise cornac implicit`` and, for LightFM,
``pip install --no-build-isolation --no-use-pep517 lightfm``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    runs = [
        [sys.executable, str(HERE / "explicit.py"), "--folds", "1", "2", "3", "4", "5"],
        [sys.executable, str(HERE / "implicit_peers.py")],
    ]
    for cmd in runs:
        code = subprocess.call(cmd)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
