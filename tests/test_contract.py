"""The raw-data contract: each check on its own, on frames built by hand."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from ml import contract
from tests.conftest import DAY, ms


def _row(values) -> dict:
    return dict(zip(contract.EVENT_COLUMNS, values, strict=True))


def _events(*rows: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame([list(r) for r in rows], columns=list(contract.EVENT_COLUMNS), dtype=object)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([None, "pageview", None, None, ms(DAY, 1), "u"], "missing_session_id"),
        (["  ", "pageview", None, None, ms(DAY, 1), "u"], "missing_session_id"),
        (["s", "search", None, None, ms(DAY, 1), "u"], "bad_event_type"),
        (["s", "pageview", None, None, "1.7e12", "u"], "bad_timestamp"),
        (["s", "pageview", None, None, "-5", "u"], "bad_timestamp"),
        (["s", "pageview", None, None, "١٧٦٧٥٧١٢٠٠٠٠٠", "u"], "bad_timestamp"),  # not ASCII
        (["s", "pageview", None, None, ms(DAY, -1), "u"], "timestamp_outside_day"),
        (["s", "pageview", None, None, ms(DAY, 86_400), "u"], "timestamp_outside_day"),
        (["s", "event_product", None, "p", ms(DAY, 1), "u"], "bad_product_action"),
        (["s", "event_product", "refund", "p", ms(DAY, 1), "u"], "bad_product_action"),
        (["s", "pageview", "detail", None, ms(DAY, 1), "u"], "bad_product_action"),
        (["s", "event_product", "add", None, ms(DAY, 1), "u"], "missing_product_sku"),
        # the first reason in REJECT_REASONS wins
        ([None, "search", None, None, "x", "u"], "missing_session_id"),
    ],
)
def test_each_bad_row_gets_its_reason(row, reason):
    good_row = ["s", "event_product", "Detail ", "p", ms(DAY, 86_399.999), None]
    validated = contract.validate_events(_events(good_row, row), DAY)
    assert validated.rejected["reason"].tolist() == [reason]
    assert validated.rejected["row_number"].tolist() == [2]
    assert validated.good["product_action"].tolist() == ["detail"]
    assert validated.good["server_timestamp_epoch_ms"].dtype == "int64"
    assert validated.rows_read == 2
    assert contract.check_event(_row(row), DAY)[1] == reason


def test_the_row_check_agrees_with_the_frame_check_on_every_kind_of_row():
    """`check_event` (the server's) and `validate_events` (ingestion's) on every combination
    of good, bad, padded, upper-case and missing values: the same reason, the same clean row."""
    values = {
        "session_id_hash": [None, "", "  ", "\u3000\x1c", "s", " s "],
        "event_type": [None, "pageview", "EVENT_PRODUCT ", "search"],
        "product_action": [None, "", "detail", " Add", "refund", "purchase"],
        "product_sku_hash": [None, " ", "p"],
        "server_timestamp_epoch_ms": [None, ms(DAY, 1), ms(DAY, -1), "-5", "1.7e12", "9" * 16],
        "hashed_url": [None, " u "],
    }
    rows = list(itertools.product(*(values[c] for c in contract.EVENT_COLUMNS)))
    validated = contract.validate_events(_events(*rows), DAY)
    frame_reasons = dict.fromkeys(range(1, len(rows) + 1))
    rejected = validated.rejected
    frame_reasons |= dict(zip(rejected["row_number"], rejected["reason"], strict=True))
    good = iter(validated.good.drop(columns="event_day").to_dict("records"))
    for number, row in enumerate(rows, start=1):
        cleaned, reason = contract.check_event(_row(row), DAY)
        assert reason == frame_reasons[number], row
        if reason is None:
            expected = {k: (None if pd.isna(v) else v) for k, v in next(good).items()}
            assert cleaned == expected, row
    assert set(frame_reasons.values()) == {None, *contract.REJECT_REASONS}


def test_without_a_day_the_row_check_skips_the_day_reasons():
    row = _row(["s", "pageview", None, None, ms(DAY, -1), None])
    assert contract.check_event(row, DAY)[1] == "timestamp_outside_day"
    assert contract.check_event(row)[1] is None
    reasons = set(contract.REJECT_REASONS)
    assert set(contract.REASON_COLUMNS) == set(contract.REASON_RULES) == reasons


def test_schema_error_names_missing_and_unexpected_columns():
    with pytest.raises(contract.SchemaError) as err:
        contract.check_columns(["session_id_hash", "extra"], contract.EVENT_COLUMNS, "events")
    message = str(err.value)
    assert "missing column(s) ['event_type'," in message
    assert "unexpected column(s) ['extra']" in message


def test_products_price_bucket_and_sku():
    frame = pd.DataFrame(
        [
            ["p1", "a/b", "10", None, None],
            ["p2", None, None, None, None],
            ["p3", "a/c", "11", None, None],
            [None, "a/c", "3", None, None],
        ],
        columns=list(contract.PRODUCT_COLUMNS),
        dtype=object,
    )
    validated = contract.validate_products(frame, DAY)
    assert validated.good["product_sku_hash"].tolist() == ["p1", "p2"]
    assert validated.rejected["reason"].tolist() == ["bad_price_bucket", "missing_product_sku"]
