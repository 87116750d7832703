"""Retrieval: top-k items for query vectors behind one :class:`Index` protocol."""

from torchmf.retrieval.base import CSR, Index, csr_rows, csr_union
from torchmf.retrieval.exact import ExactIndex

__all__ = ["CSR", "ExactIndex", "Index", "csr_rows", "csr_union"]
