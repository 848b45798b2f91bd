"""The serving log's contract: which lines of `events-YYYY-MM-DD.jsonl` are records, and why
the others are not.

The server appends one JSON object a line (`serving/eventlog.py`; reader `ml.experiments`):
exposures (what a session was shown, by which variant and model), feedback (what the user did
with an exposure) and shadow scores. `parse_log` checks every line and splits the day into
three frames of records plus a quarantine of the lines refused, each with its 1-based
`line_number` and the first reason that applies (in the order of `REASONS`; a type reason
names the field, e.g. `wrong_type:latency_ms`). Nothing is dropped: records + quarantined =
lines, where a line is what ends with a line break, plus the last one if it lacks it.

Decisions:
- Every field listed in `FIELDS` must be present (a record of an older server that lacks one
  is quarantined as `missing_field:<name>`, visible, not silently half-read); null is allowed
  only where the server writes null (no experiment, no stage, no session). A count
  (`history_events`, `history_adds`) is a whole number >= 0, never a bool. Unknown extra
  fields are ignored, so the server may add one before this contract learns it.
- A last line without its line break that is no JSON is `cut_short`: the server crashed in
  the middle of a write, or the file is read while a line is being appended (the hourly
  rollout loop reads today's file). Rereading the day later loads it.
- `at` must be ISO 8601 with a UTC offset; it is kept as naive UTC. Its day may differ from
  the file's by the milliseconds around midnight, so it is not checked against the file's day.
- `weights` are stored as canonical JSON text (`weights_text`): the same object gives the
  same text, so a period (experiment, stage, weights) can be grouped on in SQL.
- Answer fields (`probability`, `items`, `path`) are optional: an exposure whose model call
  raised has none. Lists (`items`, `context`, `propensities`, `teams`) are kept as JSON text.
- The off-policy and interleaving fields of an exposure (issue #14) are optional too, so the
  logs of an older server still load (the marts read a missing `mode` as 'ab' and a missing
  `explored` as false): `mode` ('ab' | 'interleaving', else `unknown_mode`), `context` (the
  request's items, oldest first), `propensities` (the logging policy's probability of
  showing that item at that position: each in (0, 1], since an item that was shown had a
  chance to be; 0 or more than 1 is `wrong_type:propensities`, as a negative count is a
  wrong type), `explored`, `logging_policy` and `teams` (each a role, else
  `wrong_type:teams`). One propensity or team per shown item: with `items` present, a
  `propensities` or `teams` of another length is `length_mismatch:<field>`; the only check
  across fields, it comes last.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.experiments import ACTIONS

KINDS = ("exposure", "feedback", "shadow")
PROBLEMS = ("conversion", "recommender")
ROLES = ("champion", "challenger")
MODES = ("ab", "interleaving")
MAX_QUARANTINED_CHARS = 10_000  # of a refused line kept in the quarantine

# Why a line is no record, first applicable wins. `missing_field`, `wrong_type` and
# `length_mismatch` are followed by `:<field>`.
REASONS = (
    "empty_line",
    "invalid_utf8",
    "cut_short",
    "not_json",
    "not_an_object",
    "unknown_kind",
    "missing_field",
    "wrong_type",
    "bad_timestamp",
    "unknown_problem",
    "unknown_role",
    "unknown_mode",
    "unknown_action",
    "length_mismatch",
)

_STR, _NUMBER, _INT, _BOOL, _WEIGHTS = "str", "number", "int", "bool", "weights"
# lists, kept as JSON text: of str; of probabilities in (0, 1]; of roles
_ITEMS, _PROPENSITIES, _TEAMS = "items", "propensities", "teams"
_LISTS = (_ITEMS, _PROPENSITIES, _TEAMS)
# field: (type, nullable), per kind, in the order of the frames' columns
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "exposure": {
        "id": (_STR, False),
        "at": (_STR, False),
        "problem": (_STR, False),
        "experiment": (_STR, True),
        "stage": (_STR, True),
        "session_id": (_STR, True),
        "variant": (_STR, False),
        "role": (_STR, False),
        "model_version": (_STR, False),
        "weights": (_WEIGHTS, True),
        "latency_ms": (_NUMBER, False),
        "error": (_BOOL, False),
        "history_events": (_INT, False),
        "history_adds": (_INT, False),
    },
    "feedback": {
        "exposure_id": (_STR, False),
        "action": (_STR, False),
        "at": (_STR, False),
    },
    "shadow": {
        "exposure_id": (_STR, False),
        "at": (_STR, False),
        "problem": (_STR, False),
        "role": (_STR, False),
        "model_version": (_STR, False),
    },
}
# Optional fields: kept when present (and of the right type), null otherwise.
OPTIONAL: dict[str, dict[str, str]] = {
    "exposure": {
        "probability": _NUMBER,
        "items": _ITEMS,
        "path": _STR,
        "mode": _STR,
        "context": _ITEMS,
        "propensities": _PROPENSITIES,
        "teams": _TEAMS,
        "explored": _BOOL,
        "logging_policy": _STR,
    },
    "feedback": {"item": _STR},
    "shadow": {
        "latency_ms": _NUMBER,
        "error": _BOOL,
        "probability": _NUMBER,
        "items": _ITEMS,
        "path": _STR,
    },
}
# Lists that must have one element per shown item (`items`), when both are present.
ALIGNED = ("propensities", "teams")
QUARANTINE_COLUMNS = ("line_number", "reason", "line")


def json_list(value) -> list | None:
    """A list field as stored (JSON text, see the module docstring) or as a list or array
    already, back as a list; None for a missing value (None, NaN, pandas NA)."""
    if isinstance(value, str):
        return json.loads(value)
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return list(value)


def columns(kind: str) -> list[str]:
    """The columns of a kind's frame: `line_number`, then its fields, then optional ones."""
    return ["line_number", *FIELDS[kind], *OPTIONAL[kind]]


@dataclass(frozen=True)
class ParsedLog:
    """One log file as read: records by kind, and the quarantined lines."""

    exposures: pd.DataFrame
    feedback: pd.DataFrame
    shadows: pd.DataFrame
    quarantine: pd.DataFrame

    @property
    def lines(self) -> int:
        return len(self.exposures) + len(self.feedback) + len(self.shadows) + len(self.quarantine)


def weights_text(weights: Mapping[str, float] | None) -> str:
    """Canonical JSON of a variant -> weight mapping ('{}' for none)."""
    return json.dumps(dict(weights or {}), sort_keys=True)


def _is(value: object, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == _NUMBER:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind == _WEIGHTS:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _is(v, _NUMBER) and v >= 0 for k, v in value.items()
        )
    if kind == _ITEMS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _PROPENSITIES:
        return isinstance(value, list) and all(_is(v, _NUMBER) and 0 < v <= 1 for v in value)
    if kind == _TEAMS:
        return isinstance(value, list) and all(v in ROLES for v in value)
    raise ValueError(f"unknown field type {kind!r}")


def _timestamp(text: str) -> dt.datetime | None:
    """ISO 8601 with a UTC offset -> naive UTC; None when it is not one."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.utcoffset() is None:
        return None
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def check_record(record: object) -> tuple[str, dict] | str:
    """(kind, row) for a valid record, else the reason it is refused."""
    if not isinstance(record, dict):
        return "not_an_object"
    kind = record.get("kind")
    if kind not in KINDS:
        return "unknown_kind"
    row: dict = {}
    for name, (kind_of_value, nullable) in FIELDS[kind].items():
        if name not in record:
            return f"missing_field:{name}"
        value = record[name]
        if value is None and nullable:
            row[name] = None
            continue
        if not _is(value, kind_of_value):
            return f"wrong_type:{name}"
        row[name] = value
    for name, kind_of_value in OPTIONAL[kind].items():
        value = record.get(name)
        if value is not None and not _is(value, kind_of_value):
            return f"wrong_type:{name}"
        row[name] = value
    row["at"] = _timestamp(row["at"])
    if row["at"] is None:
        return "bad_timestamp"
    if "problem" in row and row["problem"] not in PROBLEMS:
        return "unknown_problem"
    if "role" in row and row["role"] not in ROLES:
        return "unknown_role"
    if row.get("mode") is not None and row["mode"] not in MODES:
        return "unknown_mode"
    if "action" in row and row["action"] not in ACTIONS:
        return "unknown_action"
    shown = row.get("items")
    for name in ALIGNED:
        if row.get(name) is not None and shown is not None and len(row[name]) != len(shown):
            return f"length_mismatch:{name}"
    if "weights" in row:
        row["weights"] = weights_text(row["weights"])
    for name, kind_of_value in OPTIONAL[kind].items():
        if kind_of_value in _LISTS and row[name] is not None:
            row[name] = json.dumps(row[name])
    return kind, row


def _lines(data: bytes) -> list[bytes]:
    """The file's lines without their line breaks; the last one even if it lacks its break."""
    lines = data.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def parse_log(data: bytes) -> ParsedLog:
    """Check every line of one log file's bytes (see the module's docstring)."""
    rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    refused: list[dict] = []
    lines = _lines(data)
    cut = not data.endswith(b"\n")  # the last line lost its end
    for number, raw in enumerate(lines, start=1):
        outcome = _check_line(raw, last_and_cut=cut and number == len(lines))
        if isinstance(outcome, str):
            text = raw.decode("utf-8", errors="replace")[:MAX_QUARANTINED_CHARS]
            refused.append({"line_number": number, "reason": outcome, "line": text})
        else:
            kind, row = outcome
            rows[kind].append({"line_number": number, **row})
    return ParsedLog(
        exposures=_frame(rows["exposure"], "exposure"),
        feedback=_frame(rows["feedback"], "feedback"),
        shadows=_frame(rows["shadow"], "shadow"),
        quarantine=pd.DataFrame(refused, columns=list(QUARANTINE_COLUMNS)).astype(
            {"line_number": "int64"}
        ),
    )


def _check_line(raw: bytes, *, last_and_cut: bool) -> tuple[str, dict] | str:
    if not raw.strip():
        return "empty_line"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        record = json.loads(text)
    except ValueError:
        return "cut_short" if last_and_cut else "not_json"
    return check_record(record)


# Frame dtypes: nullable where the contract allows null, so the warehouse gets NULL, not NaN.
_DTYPES = {
    _STR: "object",
    _NUMBER: "Float64",
    _INT: "Int64",
    _BOOL: "boolean",
    _WEIGHTS: "object",
    **dict.fromkeys(_LISTS, "object"),
}


def _frame(rows: list[dict], kind: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns(kind))
    types = {name: _DTYPES[t] for name, (t, _) in FIELDS[kind].items()}
    types.update({name: _DTYPES[t] for name, t in OPTIONAL[kind].items()})
    types.update({"line_number": "int64", "at": "datetime64[ns]"})
    return frame.astype(types)
