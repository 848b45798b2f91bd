"""Team-draft interleaving: which of two recommenders do users prefer, from one list.

Method (Radlinski, Kurup & Joachims 2008, "How does clickthrough data reflect retrieval
quality?"): the champion's and the challenger's rankings are merged into one list shown to the
user. The two teams take turns; in each round the team with fewer picks picks (a coin flip when
both have as many), and a team picks its highest-ranked item not already in the list. A team
whose list is exhausted lets the other go on; the draft stops at k items or when both lists are
exhausted. Every shown item remembers its team, and a click on it credits that team. The coin
makes the position of each team's items fair in expectation: with two equally good lists the
teams win equally often, whatever the lists' overlap.

Credit: a clicked item shown in the exposure credits its team once per exposure (a repeated click
counts once; a click on an item not shown is ignored, e.g. one from another page). Credits add up
over a session's interleaved exposures.

Sessions are the unit: the session's team with more credits wins it; its sign
s = sign(challenger - champion) is -1, 0 or 1. Exposures within a session are not independent
(the same user, the same intent), so the test treats sessions as the independent draws, as the
A/B statistics do. A tie (s = 0) is a session where neither team got more clicks, including a
session without any click: it carries no preference but counts in the mean, so `preference` is
the share of sessions won by the challenger minus the share won by the champion.

Inference: preference = mean(s) with variance var(s) / n (sample variance, ddof 1). Its
always-valid interval and p-value come from the normal-mixture mSPRT of `ml.sequential`, the
mixture tuned at `n_star` sessions (`tuned_mixture(var(s) / n_star)`), so the result may be read
at every look; `p_value` is this look's, and a caller keeping looks takes their running minimum.
The fixed-horizon z-interval is reported beside it for one pre-set look. The decision is
"challenger" when the always-valid interval lies above 0, "champion" when below, else
"undecided". With fewer than 2 sessions, or a sample variance of 0 (every session the same
sign, e.g. all ties), the plug-in variance says nothing: the intervals and p-values are NaN and
the decision is "undecided".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml import sequential
from ml.serving_log import json_list

TEAMS = ("champion", "challenger")


def team_draft(
    lists: Mapping[str, Sequence[str]], k: int, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """(items, teams) of the team-draft of two rankings (best first), keyed by team name;
    teams[i] is the key of the list that contributed items[i]. The coin is `rng.integers(2)`
    (0: the first key picks), drawn only in rounds where both teams can pick and have as many
    picks, so the draft is deterministic given the rng."""
    if len(lists) != 2:
        raise ValueError(f"team_draft needs exactly two lists, got {len(lists)}: {list(lists)}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    names = list(lists)
    rankings = [list(lists[name]) for name in names]
    next_index = [0, 0]  # where each team's search for an unshown item resumes
    picks = [0, 0]
    items: list[str] = []
    teams: list[str] = []
    shown: set[str] = set()

    def skip_shown(team: int) -> bool:
        ranking = rankings[team]
        while next_index[team] < len(ranking) and ranking[next_index[team]] in shown:
            next_index[team] += 1
        return next_index[team] < len(ranking)

    while len(items) < k:
        can_pick = [skip_shown(0), skip_shown(1)]
        if not any(can_pick):
            break
        if not all(can_pick):
            team = can_pick.index(True)
        elif picks[0] != picks[1]:
            team = int(picks[1] < picks[0])
        else:
            team = int(rng.integers(2))
        item = rankings[team][next_index[team]]
        items.append(item)
        teams.append(names[team])
        shown.add(item)
        picks[team] += 1
    return items, teams


def credit(items: Sequence[str], teams: Sequence[str], clicked: Iterable[str]) -> dict[str, int]:
    """Clicks credited to each team in one exposure: a clicked item shown credits its team once.
    Every team of TEAMS has a key (0 without a click), then any other team named in `teams`."""
    if len(items) != len(teams):
        raise ValueError(f"items and teams must align: {len(items)} items, {len(teams)} teams")
    team_of = dict(zip(items, teams, strict=True))
    credits = dict.fromkeys((*TEAMS, *teams), 0)
    for item in set(clicked):
        if item in team_of:
            credits[team_of[item]] += 1
    return credits


def session_credits(exposures: pd.DataFrame, clicks: pd.DataFrame) -> pd.DataFrame:
    """One row per session with an interleaved exposure: session_id, champion, challenger
    (credits summed over its exposures) and exposures (their number). `items` and `teams` are
    lists or JSON text; exposures without teams (not interleaved) are left out."""
    missing = {"session_id", "exposure_id", "items", "teams"} - set(exposures.columns)
    if missing or not {"exposure_id", "item"} <= set(clicks.columns):
        raise ValueError(
            "session_credits needs exposures(session_id, exposure_id, items, teams) and "
            f"clicks(exposure_id, item); exposures lack {sorted(missing)}, "
            f"clicks have {list(clicks.columns)}"
        )
    clicked: dict[str, set[str]] = {}
    for exposure_id, item in zip(clicks["exposure_id"], clicks["item"], strict=True):
        clicked.setdefault(exposure_id, set()).add(item)
    rows = []
    for session_id, exposure_id, items, teams in zip(
        exposures["session_id"],
        exposures["exposure_id"],
        exposures["items"],
        exposures["teams"],
        strict=True,
    ):
        teams = json_list(teams)
        if teams is None:
            continue
        got = credit(json_list(items) or [], teams, clicked.get(exposure_id, ()))
        rows.append((session_id, got["champion"], got["challenger"]))
    frame = pd.DataFrame(rows, columns=["session_id", "champion", "challenger"])
    return (
        frame.groupby("session_id", sort=True)
        .agg(
            champion=("champion", "sum"),
            challenger=("challenger", "sum"),
            exposures=("champion", "size"),
        )
        .reset_index()
        .astype({"champion": "int64", "challenger": "int64", "exposures": "int64"})
    )


@dataclass(frozen=True)
class InterleavingResult:
    sessions: int
    exposures: int
    challenger_wins: int
    champion_wins: int
    ties: int
    win_rate: float  # challenger wins / sessions with a winner; NaN when none
    preference: float  # mean of sign(challenger - champion) per session
    low: float  # always-valid (1 - alpha) interval of the preference (mSPRT)
    high: float
    p_value: float  # always-valid p-value of "no preference"
    fixed_low: float  # fixed-horizon z-interval, valid at one pre-set look only
    fixed_high: float
    fixed_p_value: float
    decision: str  # "challenger" | "champion" | "undecided"


def interleaving_result(
    credits: pd.DataFrame, alpha: float = 0.05, n_star: int = 1000
) -> InterleavingResult:
    """The preference of sessions for the challenger (see the module docstring) from
    `session_credits` rows; `exposures` counts one per row when that column is absent."""
    if n_star < 1:
        raise ValueError(f"n_star must be >= 1 session, got {n_star}")
    signs = np.sign(
        credits["challenger"].to_numpy(dtype=float) - credits["champion"].to_numpy(dtype=float)
    )
    n = len(signs)
    wins, losses = int((signs > 0).sum()), int((signs < 0).sum())
    preference = float(signs.mean()) if n else math.nan
    low = high = p = fixed_low = fixed_high = fixed_p = math.nan
    sd2 = float(signs.var(ddof=1)) if n >= 2 else 0.0
    if sd2 > 0:
        variance = sd2 / n
        tau2 = sequential.tuned_mixture(sd2 / n_star, alpha)
        low, high = (
            float(x) for x in sequential.confidence_sequence(preference, variance, tau2, alpha)
        )
        p = float(sequential.always_valid_p(preference, variance, tau2))  # this look's
        fixed_low, fixed_high, fixed_p = (
            float(x) for x in sequential.fixed_interval(preference, variance, alpha)
        )
    decision = "challenger" if low > 0 else "champion" if high < 0 else "undecided"
    exposures = int(credits["exposures"].sum()) if "exposures" in credits else n
    return InterleavingResult(
        sessions=n,
        exposures=exposures,
        challenger_wins=wins,
        champion_wins=losses,
        ties=n - wins - losses,
        win_rate=wins / (wins + losses) if wins + losses else math.nan,
        preference=preference,
        low=low,
        high=high,
        p_value=p,
        fixed_low=fixed_low,
        fixed_high=fixed_high,
        fixed_p_value=fixed_p,
        decision=decision,
    )
