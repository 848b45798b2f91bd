"""What `skiff demo` prints at the end: how to start the server on its state, and a request."""

from __future__ import annotations

import json
import shlex

from ml.registry import ArtifactError, published_copy
from serving.store import LOOKUP
from skiff.settings import Settings
from skiff.urls import serve_url


def _known_products(settings: Settings) -> list[str]:
    """Two products the published recommender knows, one likely viewed after the other, so
    that the model itself answers (one product alone is answered by its precomputed list)."""
    import pyarrow.parquet as pq

    try:
        with published_copy(settings.published, "recommender") as (_, folder):
            if not (folder / LOOKUP).exists():
                return []
            rows = pq.read_table(folder / LOOKUP).slice(0, 100).to_pylist()
    except ArtifactError:
        return []
    for row in rows:
        following = [sku for sku in row["next_items"] if sku != row["product_sku_hash"]]
        if following:
            return [row["product_sku_hash"], following[0]]
    return []


def serve_hint(settings: Settings) -> str:
    url = serve_url()
    skus = _known_products(settings)
    if not skus:
        request = f"curl -s {url}/readyz"
    else:
        payload = json.dumps({"session_id": "demo-session", "items": skus, "k": 5})
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
