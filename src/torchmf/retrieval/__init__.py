"""Top-k retrieval: exact and approximate indexes over item factors."""
