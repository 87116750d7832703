"""``torchmf serve``: an HTTP recommendation service (FastAPI + uvicorn).

Install with ``pip install 'torchmf[serve]'``. :func:`create_app` returns the
ASGI app for embedding and tests; :func:`run` serves it (the CLI's entry).
The service reads saved models only: it depends on the estimator's loading and
query methods, never on training.
"""

from torchmf.serve.app import ServeConfig, create_app
from torchmf.serve.schemas import Limits

__all__ = ["Limits", "ServeConfig", "create_app"]
