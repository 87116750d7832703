"""The ``torchmf`` command line."""
