"""The grid behind the explicit defaults: ALS settings scored by mean RMSE over ML-100k's u1..u5.

    python benchmarks/explicit_grid.py > grid.txt; sort grid.txt | head

Prints one line per setting: mean RMSE over the five folds, u1's RMSE, the setting.
Unknown test pairs are predicted by fallback, as in benchmarks/explicit.py.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchmf
from common import DATA_HOME


def main() -> None:
    folds = [torchmf.datasets.load_movielens_fold(f, DATA_HOME) for f in range(1, 6)]
    penalties = ((1.0, 0.1), (1.0, 0.13), (0.75, 0.35), (0.75, 0.45), (0.75, 0.55), (0.5, 1.5), (0.5, 2.0))
    for factors, epochs, (exponent, reg), reg_bias in itertools.product(
        (32, 48, 64), (5, 6, 8), penalties, (0.05, 0.2)
    ):
        setting = dict(factors=factors, epochs=epochs, reg_exponent=exponent, reg=reg, reg_bias=reg_bias)
        scores = []
        for train, test in folds:
            model = torchmf.MatrixFactorization(verbose=False, **setting).fit(train)
            pred = model.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")
            scores.append(float(np.sqrt(np.mean((pred - test.values) ** 2))))
        print(f"{np.mean(scores):.4f} u1={scores[0]:.4f} {setting}", flush=True)


if __name__ == "__main__":
    main()
