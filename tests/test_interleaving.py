"""ml.interleaving against drafts worked by hand from a seeded rng's first coins, a z-interval
and a mixture boundary computed here with scipy, and simulations with a known truth: two
equally good rankings (no preference, at every look) and one that ranks the clicked item higher."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from ml.interleaving import (
    TEAMS,
    credit,
    interleaving_result,
    session_credits,
    team_draft,
)

CHAMPION, CHALLENGER = TEAMS
LISTS = {CHAMPION: ["a", "b", "c", "d", "e"], CHALLENGER: ["b", "a", "f", "c", "g"]}


def _first_coins(seed: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(rng.integers(2)) for _ in range(n)]


def test_team_draft_when_the_champion_wins_the_first_coin():
    assert _first_coins(1, 3) == [0, 1, 1]
    # coin 0: champion a; challenger b; coin 1: challenger f (b, a shown); champion c;
    # coin 1: challenger g (b, a, f, c shown); champion d: k = 6 reached.
    items, teams = team_draft(LISTS, 6, np.random.default_rng(1))
    assert items == ["a", "b", "f", "c", "g", "d"]
    assert teams == [CHAMPION, CHALLENGER, CHALLENGER, CHAMPION, CHALLENGER, CHAMPION]


def test_team_draft_when_the_challenger_wins_the_first_coin():
    assert _first_coins(2, 3) == [1, 0, 0]
    # coin 1: challenger b; champion a; coin 0: champion c; challenger f; coin 0: champion d;
    # challenger g (b, a, f, c shown).
    items, teams = team_draft(LISTS, 6, np.random.default_rng(2))
    assert items == ["b", "a", "c", "f", "d", "g"]
    assert teams == [CHALLENGER, CHAMPION, CHAMPION, CHALLENGER, CHAMPION, CHALLENGER]


def test_team_draft_of_identical_lists_is_that_list_with_teams_by_the_coins():
    ranking = ["a", "b", "c", "d"]
    assert _first_coins(0, 2) == [1, 1]
    items, teams = team_draft({"x": ranking, "y": list(ranking)}, 4, np.random.default_rng(0))
    assert items == ranking  # each team's best unshown item is the next one of the list
    assert teams == ["y", "x", "y", "x"]


def test_an_exhausted_list_lets_the_other_team_go_on():
    assert _first_coins(1, 1) == [0]
    items, teams = team_draft(
        {CHAMPION: ["a"], CHALLENGER: ["a", "b", "c", "d"]}, 4, np.random.default_rng(1)
    )
    assert items == ["a", "b", "c", "d"]
    assert teams == [CHAMPION, CHALLENGER, CHALLENGER, CHALLENGER]
    # both exhausted before k: the list is the union; an empty list never picks
    items, teams = team_draft(
        {CHAMPION: ["a", "b"], CHALLENGER: ["b"]}, 10, np.random.default_rng(1)
    )
    assert items == ["a", "b"] and teams == [CHAMPION, CHALLENGER]
    items, teams = team_draft(
        {CHAMPION: [], CHALLENGER: ["b", "b", "c"]}, 5, np.random.default_rng(3)
    )
    assert items == ["b", "c"] and teams == [CHALLENGER, CHALLENGER]


def test_team_draft_invariants_over_random_lists():
    rng = np.random.default_rng(11)
    for _ in range(300):
        catalog = [f"i{j}" for j in range(int(rng.integers(1, 15)))]
        a = list(rng.choice(catalog, size=int(rng.integers(0, 10))))  # may repeat items
        b = list(rng.choice(catalog, size=int(rng.integers(0, 10))))
        k = int(rng.integers(1, 12))
        seed = int(rng.integers(1 << 30))
        items, teams = team_draft({"a": a, "b": b}, k, np.random.default_rng(seed))
        assert (items, teams) == team_draft({"a": a, "b": b}, k, np.random.default_rng(seed))
        assert len(items) == len(set(items)) == min(k, len(set(a) | set(b)))
        for name, ranking in (("a", a), ("b", b)):
            own = [item for item, team in zip(items, teams, strict=True) if team == name]
            # a team's picks are its own best unshown items, in its order
            assert own == [x for x in dict.fromkeys(ranking) if x in own]
        for cut in range(len(items) + 1):  # while both can pick, the picks differ by <= 1
            left = {"a": set(a) - set(items[:cut]), "b": set(b) - set(items[:cut])}
            if left["a"] and left["b"]:
                assert abs(teams[:cut].count("a") - teams[:cut].count("b")) <= 1


@pytest.mark.parametrize(
    "lists, k, message",
    [
        ({CHAMPION: ["a"]}, 3, "exactly two lists"),
        ({"x": ["a"], "y": ["b"], "z": ["c"]}, 3, "exactly two lists"),
        (LISTS, 0, "k must be"),
        (LISTS, 2.5, "k must be"),
    ],
)
def test_team_draft_rejects_bad_input(lists, k, message):
    with pytest.raises(ValueError, match=message):
        team_draft(lists, k, np.random.default_rng(0))


def test_credit_counts_each_clicked_shown_item_once():
    items, teams = ["a", "b", "f", "c"], [CHAMPION, CHALLENGER, CHALLENGER, CHAMPION]
    assert credit(items, teams, ["b", "f", "b", "zz"]) == {CHAMPION: 0, CHALLENGER: 2}
    assert credit(items, teams, ["c", "c", "a", "f"]) == {CHAMPION: 2, CHALLENGER: 1}
    assert credit(items, teams, []) == {CHAMPION: 0, CHALLENGER: 0}
    assert credit(["a"], ["x"], ["a"]) == {CHAMPION: 0, CHALLENGER: 0, "x": 1}
    with pytest.raises(ValueError, match="must align"):
        credit(items, teams[:2], ["a"])


def test_session_credits_from_json_text_and_lists():
    exposures = pd.DataFrame(
        {
            "session_id": ["s1", "s1", "s2", "s3", "s4"],
            "exposure_id": ["e1", "e2", "e3", "e4", "e5"],
            "items": [
                json.dumps(["a", "b", "c"]),
                ["d", "e"],
                json.dumps(["a", "b"]),
                json.dumps(["x", "y"]),
                json.dumps(["a"]),
            ],
            "teams": [
                json.dumps([CHAMPION, CHALLENGER, CHAMPION]),
                [CHALLENGER, CHAMPION],
                json.dumps([CHALLENGER, CHAMPION]),
                json.dumps([CHAMPION, CHALLENGER]),
                None,  # an A/B exposure: not interleaved (NaN and pd.NA alike)
            ],
        }
    )
    clicks = pd.DataFrame(
        {
            "exposure_id": ["e1", "e1", "e1", "e2", "e3", "e3", "e5"],
            "item": ["a", "a", "zz", "d", "b", "a", "a"],
        }
    )
    got = session_credits(exposures, clicks)
    expected = pd.DataFrame(
        {
            "session_id": ["s1", "s2", "s3"],
            "champion": [1, 1, 0],  # s1: a (twice) in e1; s2: b; s3: no click
            "challenger": [1, 1, 0],  # s1: d in e2; s2: a
            "exposures": [2, 1, 1],
        }
    )
    pd.testing.assert_frame_equal(got, expected)
    result = interleaving_result(got)
    assert (result.sessions, result.exposures, result.ties) == (3, 4, 3)
    # arrays as DuckDB hands them over; missing teams as NaN or pd.NA
    arrays = pd.DataFrame(
        {
            "session_id": ["s1", "s1", "s2"],
            "exposure_id": ["e1", "e2", "e3"],
            "items": [np.array(["a", "b"]), np.array(["c"]), np.array(["a"])],
            "teams": [np.array([CHALLENGER, CHAMPION]), pd.NA, math.nan],
        }
    )
    got = session_credits(arrays, pd.DataFrame({"exposure_id": ["e1"], "item": ["a"]}))
    assert got.to_dict("records") == [
        {"session_id": "s1", "champion": 0, "challenger": 1, "exposures": 1}
    ]


def test_session_credits_of_nothing_and_of_wrong_columns():
    empty = session_credits(
        pd.DataFrame(columns=["session_id", "exposure_id", "items", "teams"]),
        pd.DataFrame(columns=["exposure_id", "item"]),
    )
    assert list(empty.columns) == ["session_id", "champion", "challenger", "exposures"]
    assert empty.empty
    with pytest.raises(ValueError, match=r"lack \['teams'\]"):
        session_credits(
            pd.DataFrame(columns=["session_id", "exposure_id", "items"]),
            pd.DataFrame(columns=["exposure_id", "item"]),
        )


def _credits(signs) -> pd.DataFrame:
    signs = np.asarray(signs)
    return pd.DataFrame({"champion": (signs < 0).astype(int), "challenger": (signs > 0) * 2})


def _tuned_ratio(alpha: float) -> float:
    return optimize.brentq(lambda r: r - 2 * math.log(1 / alpha) - math.log1p(r), 1e-9, 100)


def test_interleaving_result_by_hand():
    signs = [1, 1, 0, -1, 1, 0, 1, 0, 1, 1, -1, 1]
    result = interleaving_result(_credits(signs), alpha=0.1, n_star=50)
    n, mean = 12, 5 / 12  # 7 wins, 2 losses, 3 ties
    assert (result.sessions, result.exposures) == (n, n)
    assert (result.challenger_wins, result.champion_wins, result.ties) == (7, 2, 3)
    assert result.win_rate == pytest.approx(7 / 9)
    assert result.preference == pytest.approx(mean)
    sd2 = (7 * (1 - mean) ** 2 + 2 * (-1 - mean) ** 2 + 3 * mean**2) / (n - 1)
    se = math.sqrt(sd2 / n)
    z = stats.norm.ppf(0.95)
    assert result.fixed_low == pytest.approx(mean - z * se)
    assert result.fixed_high == pytest.approx(mean + z * se)
    assert result.fixed_p_value == pytest.approx(2 * stats.norm.sf(mean / se))
    # the always-valid bounds are where the mixture LR (prior variance tuned at 50 sessions)
    # crosses 1/alpha, found by root finding on the closed form
    v, tau2 = sd2 / n, _tuned_ratio(0.1) * sd2 / 50

    def log_lr(null):
        return 0.5 * math.log(v / (v + tau2)) + tau2 * (mean - null) ** 2 / (2 * v * (v + tau2))

    assert result.low == pytest.approx(
        optimize.brentq(lambda x: log_lr(x) - math.log(10), -5, mean)
    )
    assert result.high == pytest.approx(
        optimize.brentq(lambda x: log_lr(x) - math.log(10), mean, 5)
    )
    assert result.p_value == pytest.approx(min(1.0, math.exp(-log_lr(0.0))))
    assert result.low < result.fixed_low < result.fixed_high < result.high
    assert 0 <= result.fixed_p_value <= result.p_value <= 1
    assert result.decision == "undecided"  # 12 sessions decide nothing


def test_decisions_and_degenerate_samples():
    strong = [1] * 300 + [0] * 600 + [-1] * 100
    assert interleaving_result(_credits(strong)).decision == "challenger"
    flipped = _credits(strong).rename(columns={CHAMPION: CHALLENGER, CHALLENGER: CHAMPION})
    assert interleaving_result(flipped).decision == "champion"
    for signs in ([], [1], [0] * 20, [1] * 20):
        result = interleaving_result(_credits(signs))
        assert result.decision == "undecided"
        assert all(math.isnan(x) for x in (result.low, result.high, result.p_value))
    assert math.isnan(interleaving_result(_credits([0] * 20)).win_rate)
    assert interleaving_result(_credits([1] * 20)).win_rate == 1.0
    with pytest.raises(ValueError, match="n_star"):
        interleaving_result(_credits([1, -1]), n_star=0)


class _ChampionFirst:
    """A coin that always lands on the first key: a draft without randomization."""

    def integers(self, n):
        return 0


def _simulate(rng, sessions: int, coin=None, challenger_better: bool = False) -> pd.DataFrame:
    """Credits of interleaved sessions of 1-3 exposures of two random top-8 lists out of 40
    items. Clicks depend on the position only (so the two rankings are equally good), unless
    the challenger ranks the exposure's wanted item in its top 4 and the champion anywhere in
    its top 8, when the user clicks that item (probability 0.9) wherever it is shown."""
    catalog = [f"i{j}" for j in range(40)]
    click_rate = 0.4 / (1 + np.arange(8))  # position bias
    session_of = np.repeat(np.arange(sessions), rng.integers(1, 4, size=sessions))
    top = rng.random((len(session_of), 2, len(catalog))).argsort(axis=2)[:, :, :8]
    uniforms = rng.random((len(session_of), 8))
    wanted_at, inserted_at = rng.integers(4, size=len(top)), rng.integers(8, size=len(top))
    credits = np.zeros((sessions, 2), dtype=int)
    for e, s in enumerate(session_of):
        champion, challenger = ([catalog[j] for j in ranking] for ranking in top[e])
        if challenger_better:
            wanted = challenger[wanted_at[e]]
            champion = [x for x in champion if x != wanted][:7]
            champion.insert(inserted_at[e], wanted)
        items, teams = team_draft({CHAMPION: champion, CHALLENGER: challenger}, 8, coin or rng)
        if challenger_better:
            clicked = [wanted] if uniforms[e, 0] < 0.9 else []
        else:
            clicked = [x for x, u, p in zip(items, uniforms[e], click_rate, strict=True) if u < p]
        got = credit(items, teams, clicked)
        credits[s] += (got[CHAMPION], got[CHALLENGER])
    return pd.DataFrame({CHAMPION: credits[:, 0], CHALLENGER: credits[:, 1]})


def test_equally_good_rankings_show_no_preference_at_any_look():
    rng = np.random.default_rng(2024)
    replications, looks, alpha = 500, (25, 50, 75, 100), 0.05
    signs, always_valid_rejects, fixed_rejects = [], 0, 0
    for _ in range(replications):
        credits = _simulate(rng, looks[-1])
        signs.append(np.sign(credits[CHALLENGER] - credits[CHAMPION]).to_numpy())
        results = [interleaving_result(credits.iloc[:n], alpha, n_star=50) for n in looks]
        always_valid_rejects += min(r.p_value for r in results) <= alpha
        fixed_rejects += results[-1].fixed_p_value <= alpha
    pooled = np.concatenate(signs)
    assert abs(pooled.mean()) < 4 * pooled.std() / math.sqrt(len(pooled))
    binomial_sd = math.sqrt(alpha * (1 - alpha) / replications)
    # the always-valid test rejects a true null at most alpha times over all looks at once
    assert always_valid_rejects / replications <= alpha + 2 * binomial_sd
    # and the z-test at one pre-set look is calibrated (so the simulation can reject)
    assert abs(fixed_rejects / replications - alpha) < 4 * binomial_sd


def test_a_draft_without_the_coin_favours_the_first_team():
    # the check above would fail without randomization: with position bias, the team that
    # always picks first wins more sessions
    result = interleaving_result(_simulate(np.random.default_rng(5), 2000, _ChampionFirst()))
    assert result.decision == "champion" and result.preference < -0.05


def test_the_ranking_that_shows_the_clicked_item_earlier_wins():
    items, teams = team_draft(
        {CHAMPION: ["a", "b", "c", "t"], CHALLENGER: ["t", "a", "b", "c"]},
        4,
        np.random.default_rng(1),
    )
    assert credit(items, teams, ["t"]) == {CHAMPION: 0, CHALLENGER: 1}
    result = interleaving_result(_simulate(np.random.default_rng(9), 300, challenger_better=True))
    assert result.decision == "challenger"
    assert result.low > 0 and result.win_rate > 0.7
