"""Business rules on what a recommendation request is shown, and the catalogue they read.

Three rules, each set per deployment (`serving.config`) and overridable per request (fields of
`RecommendationRequest`):
- `exclude_viewed` (on by default): never show a product the session already viewed (the
  request's `items`). The models rank viewed products too: a session-kNN's neighbours viewed
  them, and a product viewed again is a real next view, which is why the offline evaluator
  reports both ways (`ml.recommend.evaluate`).
- `exclude_unavailable` (on when a catalogue is configured): never show a product the
  catalogue does not list. The catalogue is a products file of the landing contract
  (`products.csv`, optionally .gz, checked by `ml.contract.validate_products`; rows it
  quarantines are left out and counted in the log) at SKIFF_SERVE_CATALOGUE, a path or an
  fsspec URL. The Coveo schema has no stock column: a product is available when the file
  lists it, so a deployment publishes the file of what can be sold now. The file is re-read
  when its size or modification time changes (checked with every reload of the models); a
  file that fails to read leaves the previous catalogue in force.
- `max_per_category` (0, off, by default): at most this many products of one category (the
  catalogue's `category_hash`; a product without a category is never capped).

Decision: the rules filter the model's ranking, they never reorder it. To still show k
products, the model is asked for more (k plus the viewed products, plus k again when the
catalogue filters), and asked again for twice as many while the filtered list is short and the
model has more to give (`Rules.enough`). Exploration shuffles the filtered top M, so its
propensities are those of what can be shown; an interleaved list merges two filtered lists and
is capped again after the draft (`capped`). Every exposure logs the list actually shown and the
rules in force (`logged`).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd

from ml import contract

log = logging.getLogger("skiff.serving")

Fetch = Callable[[int], Awaitable[Sequence[str]]]  # the model's best n, for one request


@dataclass(frozen=True)
class Catalogue:
    """The products that can be shown now, with their category (None: unknown)."""

    categories: Mapping[str, str | None]
    source: str = ""

    def __contains__(self, sku: object) -> bool:
        return sku in self.categories


def read_catalogue(url: str) -> Catalogue:
    """The catalogue in a products file (raises on a file that cannot be read at all)."""
    fs, path = fsspec.core.url_to_fs(url)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(path).name  # keeps .gz, which the reader decompresses
        local.write_bytes(fs.cat_file(path))
        landed = contract.read_landing_file(local, contract.PRODUCT_COLUMNS)
    checked = contract.validate_products(landed.rows, dt.date.today(), landed.row_numbers)
    left_out = landed.rejected["reason"].tolist() + checked.rejected["reason"].tolist()
    if left_out:
        log.warning("catalogue %s: %d row(s) left out (%s)", url, len(left_out), left_out[:5])
    good = checked.good
    categories = {
        str(sku): None if pd.isna(category) else str(category)
        for sku, category in zip(good["product_sku_hash"], good["category_hash"], strict=True)
    }
    return Catalogue(categories, url)


class CatalogueFile:
    """The catalogue at `url`, re-read when the file changes (`refresh`)."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.catalogue: Catalogue | None = None
        self._stamp: tuple | None = None

    def refresh(self) -> bool:
        """Re-read the file if its size or modification time changed; True when it did. A
        failure keeps the previous catalogue (logged), and raises only when there is none yet,
        so a server never starts on a catalogue it cannot read."""
        if not self.url:
            return False
        try:
            fs, path = fsspec.core.url_to_fs(self.url)
            info = fs.info(path)
            stamp = (info.get("size"), info.get("mtime") or info.get("LastModified"))
            if stamp == self._stamp:
                return False
            catalogue = read_catalogue(self.url)
        except Exception as exc:
            if self.catalogue is None:
                raise contract.SchemaError(
                    f"SKIFF_SERVE_CATALOGUE={self.url}: cannot be read: {exc}"
                ) from exc
            log.error("could not re-read the catalogue %s (keeping the last): %s", self.url, exc)
            return False
        self.catalogue, self._stamp = catalogue, stamp
        log.info("catalogue %s: %d products", self.url, len(catalogue.categories))
        return True


@dataclass(frozen=True)
class Rules:
    """The rules of one request: what it never shows, and the cap per category."""

    viewed: frozenset[str] = frozenset()  # excluded (empty: exclude_viewed off)
    catalogue: Catalogue | None = None  # categories; with `exclude_unavailable`, availability
    exclude_unavailable: bool = False
    max_per_category: int = 0  # 0: no cap
    logged: Mapping[str, Any] = field(default_factory=dict)  # what the exposure records

    @property
    def filters(self) -> bool:
        return bool(self.viewed or self.exclude_unavailable or self.max_per_category)

    def capped(self, items: Sequence[str], n: int) -> list[int]:
        """Indices of the first n of `items` the rules allow (first occurrence of each)."""
        kept: list[int] = []
        seen: set[str] = set()
        per_category: dict[str, int] = {}
        cap, catalogue = self.max_per_category, self.catalogue
        for i, sku in enumerate(items):
            if len(kept) == n:
                break
            if sku in seen or sku in self.viewed:
                continue
            if self.exclude_unavailable and catalogue is not None and sku not in catalogue:
                continue
            category = catalogue.categories.get(sku) if cap and catalogue is not None else None
            if category is not None:
                if per_category.get(category, 0) >= cap:
                    continue
                per_category[category] = per_category.get(category, 0) + 1
            seen.add(sku)
            kept.append(i)
        return kept

    def apply(self, items: Iterable[str], n: int) -> list[str]:
        items = list(items)
        return [items[i] for i in self.capped(items, n)]

    async def enough(self, fetch: Fetch, k: int, most: int) -> list[str]:
        """The first k allowed products of the model's ranking: asks `fetch` for more than k,
        then twice as many while fewer than k are allowed and the model has more (`most`: how
        many it can rank at all)."""
        if not self.filters:
            return self.apply(await fetch(k), k)
        ask = k + len(self.viewed) + (k if self.exclude_unavailable or self.max_per_category else 0)
        while True:
            ranked = list(await fetch(ask))
            shown = self.apply(ranked, k)
            if len(shown) >= k or len(ranked) < ask or ask >= most:
                return shown
            ask = min(2 * ask, max(most, k))


NO_RULES = Rules()
