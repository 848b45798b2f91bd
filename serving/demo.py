"""What `skiff demo` prints at the end: how to start the server on its state, and a request."""

from __future__ import annotations

import json
import shlex

from ml.registry import ArtifactError, load_published
from serving.store import LOOKUP
from serving.urls import serve_url
from skiff.settings import Settings


def _known_product(settings: Settings) -> str | None:
    """A product of the published recommender's lookup (one the model knows), if any."""
    import pyarrow.parquet as pq

    try:
        _, folder = load_published(settings.published, "recommender")
    except ArtifactError:
        return None
    if not (folder / LOOKUP).exists():
        return None
    column = pq.read_table(folder / LOOKUP, columns=["product_sku_hash"]).column(0)
    return str(column[0]) if len(column) else None


def serve_hint(settings: Settings) -> str:
    url = serve_url()
    sku = _known_product(settings)
    if sku is None:
        request = f"curl -s {url}/readyz"
    else:
        payload = json.dumps({"session_id": "demo-session", "items": [sku], "k": 5})
        request = (
            f"curl -s -X POST {url}/v1/recommendations -H 'content-type: application/json' "
            f"-d {shlex.quote(payload)}"
        )
    return (
        "Serve the published models (API docs at " + url + "/docs):\n"
        "  .venv/bin/skiff serve     # uvicorn on 127.0.0.1:8000; --host/--port to change\n"
        "and, from another shell:\n"
        f"  {request}"
    )
