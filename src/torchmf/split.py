"""Train/test splits; see :mod:`torchmf.data.split`."""
from torchmf.data.split import kfold, leave_last_out, random_split, split_report, temporal_split, user_split

__all__ = ["kfold", "leave_last_out", "random_split", "split_report", "temporal_split", "user_split"]
