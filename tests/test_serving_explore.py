"""Exploration and interleaving in the server, end to end: `skiff serve` on 127.0.0.1 with
`--explore` and an interleaving experiment file, real HTTP, published models built by
`tests.test_serving.publish_models` (plus a working recommender challenger: the published one
raises on every call, and is put back to test the interleaving's failure path).

The served lists are checked against the models' own lists computed here from the same
artifacts, and the shuffle against `ml.offpolicy.explore` seeded as the server seeds it (the
exposure id); the share of explored answers against its binomial tolerance, the shuffle's
uniformity by a chi-square test, the propensities against the formula written out here.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy import stats as scipy_stats

from ml import experiments as stats
from ml.interleaving import team_draft
from ml.offpolicy import Exploration, explore
from ml.recommend.models import make_model
from ml.registry import ROLES
from ml.serving_log import parse_log
from serving.config import ServeConfig
from serving.experiments import parse, resolve
from serving.store import load_version
from skiff.settings import ConfigError
from skiff_cli.parser import build_parser
from tests.test_serving import publish_models, register_recommender
from tests.test_serving_e2e import _log_records, serve

pytestmark = pytest.mark.e2e

RECS = "/v1/recommendations"
INTERLEAVING = {
    "recommender": {
        "name": "recs-interleaved",
        "mode": "interleaving",
        "variants": [
            {"name": "treatment", "role": "challenger", "weight": 0.5},
            {"name": "control", "role": "champion", "weight": 0.5},
        ],
    }
}
WEIGHTS = [("treatment", 0.5), ("control", 0.5)]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("explore")
    built = publish_models(home, tmp_path_factory.mktemp("explore-landing"), days=2, sessions=300)
    registry, published = built["registry"], built["published"]
    working = make_model("sknn", k_neighbors=10, idf=True).fit(built["sessions"])
    version = register_recommender(registry, working)
    registry.assign("recommender", "challenger", version, "a challenger that answers")
    registry.publish("recommender", published)
    broken = built["versions"][("recommender", "challenger")]
    built["versions"][("recommender", "challenger")] = version
    (home / "interleaving.json").write_text(json.dumps(INTERLEAVING))
    models = {r: load_version(published, "recommender", r).model for r in ROLES}
    # contexts the model itself answers (two known products or more), one over 50 products
    contexts = [s[:4] for s in built["sessions"] if len(set(s[:4])) >= 2][:40]
    contexts.append([p for s in built["sessions"] for p in s][:60])
    return {**built, "home": home, "models": models, "contexts": contexts, "broken": broken}


@pytest.fixture(scope="module")
def home(state: dict) -> Path:
    return state["home"]


def _records(home: Path, ids: list[str], kind: str = "exposure") -> list[dict]:
    key = "id" if kind == "exposure" else "exposure_id"
    by_id = {r[key]: r for r in _log_records(home) if r["kind"] == kind}
    return [by_id[i] for i in ids]


def _ask(client: httpx.Client, session_id: str, items: list[str], k: int) -> dict:
    response = client.post(RECS, json={"session_id": session_id, "items": items, "k": k})
    assert response.status_code == 200, response.text
    return response.json()


def _metric(url: str, name: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    (line,) = [line for line in lines if line.startswith(f"{name} ")]
    return float(line.split()[1])


def _rng(exposure_id: str) -> np.random.Generator:
    return np.random.default_rng(uuid.UUID(exposure_id).int)


def _parsed(home: Path, ids: list[str]) -> list[dict]:
    """The exposures `ids` as `ml.serving_log.parse_log` reads the server's files (no line of
    which may be quarantined)."""
    rows = {}
    for path in sorted((home / "serving").glob("events-*.jsonl")):
        parsed = parse_log(path.read_bytes())
        assert parsed.quarantine.empty, parsed.quarantine.head().to_dict("records")
        rows |= {r["id"]: r for r in parsed.exposures.to_dict("records")}
    return [rows[i] for i in ids]


@pytest.fixture
def server(home: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """`skiff serve` with the flags the test is parametrized with, stopped after the test."""
    log = home / f"{request.node.originalname}.log"
    with serve(home, log, "--reload-seconds", "0.2", *request.param) as (url, _):
        yield url


def _flags(*flags: str):
    return pytest.mark.parametrize("server", [flags], indirect=True, ids=["-".join(flags)])


@_flags("--explore", "0")
def test_exploration_off_serves_the_models_own_lists(server: str, state: dict):
    """--explore 0: every answer is the model's top k, every propensity 1.0, none explored;
    the shadow challenger is scored on its plain top k; the context is the latest 50 items."""
    champion, challenger = state["models"]["champion"], state["models"]["challenger"]
    asked = []
    with httpx.Client(base_url=server, timeout=10) as client:
        for i, viewed in enumerate(state["contexts"]):
            k = 3 + i % 15
            answer = _ask(client, f"off-{i}", viewed, k)
            assert answer["path"] == "model"
            assert answer["items"] == champion.recommend(viewed, k)
            asked.append((answer["exposure_id"], viewed, k))
    records = _records(state["home"], [e for e, _, _ in asked])
    for record, (_, viewed, k) in zip(records, asked, strict=True):
        assert record["propensities"] == [1.0] * k
        assert (record["explored"], record["mode"]) == (False, "ab")
        assert record["logging_policy"] == "shuffle:top20:0"
        assert record["context"] == viewed[-50:] and "teams" not in record
    assert len(asked[-1][1]) == 60 and len(records[-1]["context"]) == 50
    assert _metric(server, "skiff_explored_recommendations_total") == 0
    ids = [e for e, _, _ in asked]
    deadline = time.monotonic() + 10  # shadow scores are written after the responses
    while len({r["exposure_id"] for r in _log_records(state["home"]) if r["kind"] == "shadow"}
               & set(ids)) < len(ids):  # fmt: skip
        assert time.monotonic() < deadline, "shadow scores missing"
        time.sleep(0.1)
    for shadow, (_, viewed, k) in zip(_records(state["home"], ids, "shadow"), asked, strict=True):
        assert shadow["items"] == challenger.recommend(viewed, k)
        assert "propensities" not in shadow and "explored" not in shadow


@_flags("--explore", "1", "--explore-pool", "12")
def test_exploring_every_answer_shuffles_the_top_m(server: str, state: dict):
    """Share 1: each answer is k distinct products of the model's top M = max(12, k), in the
    order `explore` draws with the exposure's seed, each propensity 1/M; the first position
    is uniform over the top M (chi-square over 240 answers of one context, p > 1e-4)."""
    champion = state["models"]["champion"]
    exploration = Exploration(share=1.0, pool=12)
    first = Counter()
    viewed = state["contexts"][0]
    top12 = champion.recommend(viewed, 12)
    with httpx.Client(base_url=server, timeout=10) as client:
        for i in range(240):
            answer = _ask(client, f"shuffled-{i}", viewed, 5)
            assert set(answer["items"]) <= set(top12) and len(set(answer["items"])) == 5
            first[answer["items"][0]] += 1
        answers = []
        for i, context in enumerate(state["contexts"][:20]):
            k = (5, 12, 15)[i % 3]  # k over the pool: M = k
            answers.append((_ask(client, f"deep-{i}", context, k), context, k))
    _, p = scipy_stats.chisquare([first[item] for item in top12])
    assert p > 1e-4 and sum(first.values()) == 240, first
    ids = [a["exposure_id"] for a, _, _ in answers]
    for record, (answer, context, k) in zip(_records(state["home"], ids), answers, strict=True):
        m = max(12, k)
        top = champion.recommend(context, m)
        assert set(answer["items"]) <= set(top) and len(set(answer["items"])) == k
        expected = explore(top, k, exploration, _rng(answer["exposure_id"]))
        assert answer["items"] == record["items"] == expected.items
        assert record["explored"] is True and record["logging_policy"] == "shuffle:top12:1"
        assert record["propensities"] == pytest.approx([1 / m] * k, abs=1e-12)
    assert _metric(server, "skiff_explored_recommendations_total") == 240 + len(answers)


@_flags("--explore", "0.3")
def test_a_share_of_answers_explores_with_the_logged_propensities(server: str, state: dict):
    """Share 0.3 over 400 requests: the explored count is within 4 binomial standard errors
    of 120 (and equals the counter); a plain answer is the top 10 with propensity 0.7 + 0.3/20
    each, an explored one 0.3/20 plus 0.7 where the item sits at its own rank."""
    champion = state["models"]["champion"]
    contexts = state["contexts"][:8]
    tops = [champion.recommend(c, 20) for c in contexts]
    ids = []
    with httpx.Client(base_url=server, timeout=10) as client:
        for i in range(400):
            ids.append(_ask(client, f"mixed-{i}", contexts[i % 8], 10)["exposure_id"])
    records = _records(state["home"], ids)
    explored = sum(r["explored"] for r in records)
    assert abs(explored - 120) < 4 * math.sqrt(400 * 0.3 * 0.7), explored
    assert _metric(server, "skiff_explored_recommendations_total") == explored
    for i, record in enumerate(records):
        top = tops[i % 8]
        if record["explored"]:
            assert set(record["items"]) <= set(top) and len(set(record["items"])) == 10
        else:
            assert record["items"] == top[:10]
        formula = [0.7 * (item == top[r]) + 0.3 / 20 for r, item in enumerate(record["items"])]
        assert record["propensities"] == pytest.approx(formula, abs=1e-12)
        assert record["logging_policy"] == "shuffle:top20:0.3"
    shuffled = [r for r in records if r["explored"]]
    assert any(r["items"] != tops[ids.index(r["id"]) % 8][:10] for r in shuffled)
    for row, record in zip(_parsed(state["home"], ids), records, strict=True):
        assert (row["mode"], row["explored"]) == ("ab", record["explored"])
        assert json.loads(row["propensities"]) == record["propensities"]
        assert json.loads(row["context"]) == record["context"]


def test_interleaving_experiment(state: dict, home: Path):
    """Challenger sessions see the team draft of both models' top k (each team's items in its
    model's order, teams logged, no propensities, latency of both calls); control sessions see
    the champion; nothing explores (the default 5% is on). With the broken challenger put
    back, challenger sessions get the champion's list alone, logged error=true, no teams."""
    champion, challenger = state["models"]["champion"], state["models"]["challenger"]
    versions = state["versions"]
    flags = ("--reload-seconds", "0.2", "--experiments", str(home / "interleaving.json"))
    with serve(home, home / "interleaving.log", *flags) as (url, _):
        running = httpx.get(f"{url}/readyz").json()["experiments"]["recommender"]
        assert (running["name"], running["mode"]) == ("recs-interleaved", "interleaving")
        asked = []
        with httpx.Client(base_url=url, timeout=10) as client:
            for i, viewed in enumerate(state["contexts"][:30] * 2):
                sid = f"il-{i}"
                k = 4 + i % 9
                asked.append((_ask(client, sid, viewed, k), sid, viewed, k))
        records = _records(home, [a["exposure_id"] for a, *_ in asked])
        variants = Counter()
        for record, (answer, sid, viewed, k) in zip(records, asked, strict=True):
            variant = stats.assign("recs-interleaved", sid, WEIGHTS)
            variants[variant] += 1
            ours, theirs = champion.recommend(viewed, k), challenger.recommend(viewed, k)
            assert (answer["variant"], record["variant"], record["mode"]) == (
                variant,
                variant,
                "interleaving",
            )
            assert record["context"] == viewed and record["error"] is False
            assert not {"propensities", "explored"} & set(record)
            if variant == "control":
                assert answer["items"] == ours and "teams" not in record
                assert answer["model_version"] == versions[("recommender", "champion")]
                continue
            assert answer["model_version"] == versions[("recommender", "challenger")]
            assert record["role"] == "challenger" and record["latency_ms"] > 0
            items, teams = answer["items"], record["teams"]
            assert record["items"] == items and len(items) == len(teams) == k
            assert len(set(items)) == k and set(teams) <= {"champion", "challenger"}
            for team, ranked in (("champion", ours), ("challenger", theirs)):
                picked = [item for item, t in zip(items, teams, strict=True) if t == team]
                assert picked == [item for item in ranked if item in picked]  # in its order
            counts = Counter(teams)
            assert abs(counts["champion"] - counts["challenger"]) <= 1
            expected = team_draft(
                {"champion": ours, "challenger": theirs}, k, _rng(answer["exposure_id"])
            )
            assert (items, teams) == expected
        assert variants["treatment"] > 10 and variants["control"] > 10
        for row, record in zip(_parsed(home, [r["id"] for r in records]), records, strict=True):
            assert row["mode"] == "interleaving" and row["propensities"] is None
            assert row["teams"] == (json.dumps(record["teams"]) if "teams" in record else None)
        assert _metric(url, "skiff_explored_recommendations_total") == 0

        # the broken challenger (every model call raises): the champion's list, an error
        registry = state["registry"]
        registry.assign("recommender", "challenger", state["broken"], "failure path")
        registry.publish("recommender", state["published"], roles=("challenger",))
        deadline = time.monotonic() + 10
        while (
            httpx.get(f"{url}/readyz").json()["models"]["recommender/challenger"]
            != (state["broken"])
        ):
            assert time.monotonic() < deadline, "the broken challenger was not loaded"
            time.sleep(0.1)
        sid = next(f"il-{i}" for i in range(100) if stats.assign(
            "recs-interleaved", f"il-{i}", WEIGHTS) == "treatment")  # fmt: skip
        viewed = state["contexts"][0]
        answer = _ask(httpx.Client(base_url=url, timeout=10), sid, viewed, 6)
        (record,) = _records(home, [answer["exposure_id"]])
        assert answer["items"] == champion.recommend(viewed, 6)
        assert (record["role"], record["error"], record["mode"]) == (
            "challenger",
            True,
            "interleaving",
        )
        assert "teams" not in record and record["model_version"] == state["broken"]


# --- configuration ------------------------------------------------------------------------


def _experiment(mode: object, roles: tuple[str, ...] = ("challenger", "champion")) -> dict:
    variants = [{"name": r, "role": r, "weight": 1} for r in roles]
    return {"name": "x", "mode": mode, "variants": variants}


@pytest.mark.parametrize(
    "data",
    [
        {"recommender": _experiment("interleave")},
        {"recommender": _experiment(None)},
        {"conversion": _experiment("interleaving")},
        {"recommender": _experiment("interleaving", ("champion",))},
        {"recommender": _experiment("interleaving", ("challenger",))},
    ],
)
def test_a_bad_mode_is_refused_naming_the_field(data: dict):
    with pytest.raises(ConfigError, match=r"\.mode: "):
        parse(data, "experiments.json")


def test_modes_parse_and_an_inactive_experiment_runs_ab():
    (experiment,) = parse({"recommender": _experiment("interleaving")}, "x").values()
    assert experiment.mode == "interleaving"
    versions = {"champion": "v1", "challenger": "v2"}
    assert resolve("recommender", experiment, versions, 0).mode == "interleaving"
    inactive = resolve("recommender", experiment, {"champion": "v1"}, 0)
    assert (inactive.name, inactive.mode) == ("x:inactive", "ab")
    plain = {"recommender": {k: v for k, v in _experiment("ab").items() if k != "mode"}}
    assert parse(plain, "x")["recommender"].mode == "ab"


def test_exploration_settings(monkeypatch: pytest.MonkeyPatch):
    for name in ("SKIFF_SERVE_EXPLORE", "SKIFF_SERVE_EXPLORE_POOL"):
        monkeypatch.delenv(name, raising=False)
    config = ServeConfig.from_env()
    assert (config.explore, config.explore_pool) == (0.05, 20)
    assert config.exploration == Exploration(share=0.05, pool=20)
    monkeypatch.setenv("SKIFF_SERVE_EXPLORE", "0.2")
    monkeypatch.setenv("SKIFF_SERVE_EXPLORE_POOL", "30")
    assert ServeConfig.from_env().exploration.name == "shuffle:top30:0.2"
    assert ServeConfig.from_env(explore=0.0).exploration.share == 0  # a flag wins
    bad_values = [
        ("SKIFF_SERVE_EXPLORE", "1.5"),
        ("SKIFF_SERVE_EXPLORE", "nan"),
        ("SKIFF_SERVE_EXPLORE_POOL", "0"),
        ("SKIFF_SERVE_EXPLORE_POOL", "2.5"),
    ]
    for name, bad in bad_values:
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=name):
            ServeConfig.from_env()
        monkeypatch.delenv(name)
    args = build_parser().parse_args(["serve", "--explore", "0.5", "--explore-pool", "8"])
    assert (args.explore, args.explore_pool) == (0.5, 8)
    for flags in (["--explore", "1.5"], ["--explore-pool", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *flags])
