"""Data layer: interactions, id maps, readers, splits and datasets."""

from torchmf.data.convert import as_interactions
from torchmf.data.datasets import (
    SyntheticTruth,
    data_home,
    load_movielens,
    load_movielens_fold,
    synthetic,
    synthetic_counts,
)
from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions
from torchmf.data.readers import read_ratings, read_table

__all__ = [
    "IdMap",
    "Interactions",
    "SyntheticTruth",
    "as_interactions",
    "data_home",
    "load_movielens",
    "load_movielens_fold",
    "read_ratings",
    "read_table",
    "synthetic",
    "synthetic_counts",
]
