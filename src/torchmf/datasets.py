"""Public datasets namespace: ``torchmf.datasets.load_movielens``, ``synthetic``, ..."""

from torchmf.data.datasets import SyntheticTruth, data_home, load_movielens, load_movielens_fold, synthetic

__all__ = ["SyntheticTruth", "data_home", "load_movielens", "load_movielens_fold", "synthetic"]
