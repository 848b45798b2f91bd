"""A day's steps as `browsing_events.csv` rows: pageview twins, purchases, then the dirt
(exact duplicates and one kind of malformed row per `ml.contract.REJECT_REASONS`) and a shuffle."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml.contract import EVENT_COLUMNS, MS_PER_DAY, REJECT_REASONS
from ml.synthetic.catalogue import Catalogue
from ml.synthetic.config import GeneratorConfig
from ml.synthetic.shoppers import STEP_PAGE, STEP_VIEW, Conversion, Steps

_ETYPES = ("pageview", "event_product", "page_view", "event", "product")
_ACTIONS = ("", "detail", "add", "remove", "purchase", "click", "view", "checkout", "cart_add")
_BAD_TIMESTAMPS = ("", "NaN", "1.7e12", "-1", "2026-01-05T10:00:00Z", "n/a")
_PAGEVIEW, _PRODUCT_EVENT = 0, 1  # codes into _ETYPES
_NO_ACTION, _DETAIL, _ADD, _REMOVE, _PURCHASE, _CLICK = range(6)  # codes into _ACTIONS
_STEP_ACTION = np.array([_NO_ACTION, _DETAIL, _ADD, _REMOVE, _CLICK], dtype=np.int8)


@dataclass(frozen=True)
class Rows:
    """Event rows as codes: session index, event type, action, product (n_total: none), URL."""

    sess: np.ndarray
    etype: np.ndarray
    action: np.ndarray
    sku: np.ndarray
    ts: np.ndarray
    url: np.ndarray

    def take(self, index: np.ndarray) -> Rows:
        return Rows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def event_rows(st: Steps, conv: Conversion, no_sku: int) -> Rows:
    """Every step, a pageview twin per product view, and a purchase row per bought sku."""
    view = st.kind == STEP_VIEW
    is_page = st.kind == STEP_PAGE
    n_twins = int(view.sum())
    return Rows(
        sess=np.concatenate([st.sess, st.sess[view], conv.buy_sess]),
        etype=np.concatenate(
            [
                np.where(is_page, _PAGEVIEW, _PRODUCT_EVENT),
                np.full(n_twins, _PAGEVIEW),
                np.full(len(conv.buy_sess), _PRODUCT_EVENT),
            ]
        ).astype(np.int8),
        action=np.concatenate(
            [
                _STEP_ACTION[st.kind],
                np.full(n_twins, _NO_ACTION),
                np.full(len(conv.buy_sess), _PURCHASE),
            ]
        ).astype(np.int8),
        sku=np.concatenate(
            [np.where(is_page, no_sku, st.ref), np.full(n_twins, no_sku), conv.buy_sku]
        ),
        ts=np.concatenate(
            [
                st.ts,
                st.ts[view],
                st.ts[st.last[conv.buy_sess]] + st.checkout_gap[conv.buy_sess],
            ]
        ),
        url=np.concatenate([st.ref, st.ref[view], conv.buy_url]),
    )


def dirty_events(
    rng: np.random.Generator,
    rows: Rows,
    config: GeneratorConfig,
    session_ids: pa.StringArray,
    cat: Catalogue,
) -> tuple[pa.Table, int, int]:
    """The rows plus duplicates and malformed copies, shuffled: (table, duplicates, malformed)."""
    events = len(rows.sess)
    n_dup = round(config.duplicate_share * events)
    n_bad = round(config.malformed_share * events)
    copy = np.concatenate(
        [rng.choice(events, n_dup, replace=False), rng.integers(0, events, n_bad)]
    )
    rows = rows.take(np.r_[np.arange(events), copy])
    ts_text = None
    if n_bad:
        ts_text = _corrupt(rng, rows, events + n_dup, n_bad, len(session_ids), cat.n_total)
    perm = rng.permutation(len(rows.sess))
    return _table(rows, perm, ts_text, session_ids, cat), n_dup, n_bad


def _table(
    rows: Rows,
    perm: np.ndarray,
    ts_text: tuple[np.ndarray, pa.Array] | None,
    session_ids: pa.StringArray,
    cat: Catalogue,
) -> pa.Table:
    ts_col = pc.cast(pa.array(rows.ts[perm]), pa.string())
    if ts_text is not None:
        bad_mask, bad_values = ts_text
        mask = bad_mask[perm]
        ts_col = pc.replace_with_mask(ts_col, pa.array(mask), _ordered(bad_mask, bad_values, perm))
    columns = (
        _coded(rows.sess[perm], pa.concat_arrays([session_ids, pa.array(["", "   "])])),
        _coded(rows.etype[perm], pa.array(_ETYPES)),
        _coded(rows.action[perm], pa.array(_ACTIONS)),
        _coded(rows.sku[perm], pa.concat_arrays([cat.sku, pa.array([""])])),
        ts_col,
        _coded(rows.url[perm], cat.urls),
    )
    return pa.table(dict(zip(EVENT_COLUMNS, columns, strict=True)))


def _ordered(bad_mask: np.ndarray, bad_values: pa.Array, perm: np.ndarray) -> pa.Array:
    """Replacement values in the order their rows appear after the shuffle."""
    rows = np.flatnonzero(bad_mask)  # bad_values[k] belongs to row rows[k]
    position = np.empty(len(bad_mask), dtype=np.int64)
    position[perm] = np.arange(len(perm))
    return bad_values.take(pa.array(np.argsort(position[rows], kind="stable")))


def _coded(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary)


def _corrupt(
    rng: np.random.Generator, rows: Rows, first: int, n_bad: int, n_sessions: int, no_sku: int
) -> tuple[np.ndarray, pa.Array]:
    """Break rows [first, first + n_bad) in place, one reject kind each, spread evenly.

    Returns the rows whose timestamp becomes non-numeric text and that text.
    """
    at = first + np.arange(n_bad)
    kind = rng.permutation(np.arange(n_bad) % len(REJECT_REASONS))
    reason = np.array(REJECT_REASONS)[kind]
    pick = rng.integers(0, 1 << 30, n_bad)

    r = at[reason == "missing_session_id"]
    rows.sess[r] = n_sessions + pick[: len(r)] % 2  # the "" and "   " session ids
    r = at[reason == "bad_event_type"]
    rows.etype[r] = 2 + pick[: len(r)] % 3
    r = at[reason == "timestamp_outside_day"]
    rows.ts[r] += np.where(pick[: len(r)] % 2 == 0, -MS_PER_DAY, MS_PER_DAY)
    r = at[reason == "bad_product_action"]
    rows.etype[r] = _PRODUCT_EVENT
    rows.action[r] = np.array([_NO_ACTION, 6, 7, 8])[pick[: len(r)] % 4]
    r = at[reason == "missing_product_sku"]
    rows.etype[r] = _PRODUCT_EVENT
    rows.action[r] = _DETAIL
    rows.sku[r] = no_sku
    text_rows = at[reason == "bad_timestamp"]
    bad_mask = np.zeros(len(rows.sess), dtype=bool)
    bad_mask[text_rows] = True
    values = pa.array(_BAD_TIMESTAMPS).take(pa.array(pick[: len(text_rows)] % len(_BAD_TIMESTAMPS)))
    return bad_mask, values
