"""The server for a first-hour user, end to end (`skiff serve` on 127.0.0.1, real published
models from `tests.test_serving.publish_models`): /docs from the server's own files (and,
where chromium is installed, rendered by it), the business rules on recommendations checked
against lists filtered here from the model's whole ranking, and ingestion's contract on the
events the server scores."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest

from ml import contract
from ml.interleaving import team_draft
from ml.offpolicy import Exploration, explore
from serving.config import ServeConfig
from serving.experiments import Experiment, Variant
from serving.metrics import Metrics
from serving.predict import Recommended
from serving.rules import Catalogue, Rules
from serving.service import Assignment
from serving.showing import interleaved
from serving.store import Loaded, Snapshot, load_version
from skiff.settings import ConfigError
from tests.conftest import DAY, ms
from tests.test_serving import publish_models
from tests.test_serving_e2e import _log_records, serve

pytestmark = pytest.mark.e2e

RECS, SCORE = "/v1/recommendations", "/v1/conversion/score"
K = 10
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Published models, and a catalogue: every product the recommender knows, in 4
    categories (every fifth product has none), less a few popular ones (unavailable)."""
    home = tmp_path_factory.mktemp("skiff")
    built = publish_models(home, tmp_path_factory.mktemp("landing"), challengers=False)
    model = load_version(built["published"], "recommender", "champion").model
    products = model.vocab.items[1:]
    unavailable = set(model.recommend([], 12)[1::2])
    categories = {p: (None if i % 5 == 0 else f"c{i % 4}") for i, p in enumerate(products)}
    rows = [[p, categories[p], "3", None, None] for p in products if p not in unavailable]
    catalogue = home / "products.csv"
    pd.DataFrame(rows, columns=list(contract.PRODUCT_COLUMNS)).to_csv(catalogue, index=False)
    # a session whose own products the model ranks in its top K: the rule changes the answer
    viewed = next(
        s[:3]
        for s in built["sessions"]
        if len(set(s[:3])) == 3 and set(s[:3]) & set(model.recommend(s[:3], K))
    )
    return {
        **built,
        "home": home,
        "model": model,
        "ranking": model.recommend(viewed, len(products)),  # the model's whole ranking
        "viewed": viewed,
        "unavailable": unavailable,
        "categories": categories,
        "catalogue": catalogue,
    }


@pytest.fixture(scope="module")
def server(state: dict) -> Iterator[str]:
    """The deployment's defaults (viewed products excluded, a catalogue: unavailable products
    excluded, no cap), exploration off."""
    env = {"SKIFF_SERVE_CATALOGUE": str(state["catalogue"])}
    with serve(state["home"], state["home"] / "server.log", "--explore", "0", env=env) as (url, _):
        yield url


def allowed(ranking, k, viewed=(), unavailable=(), categories=None, cap=0) -> list[str]:
    """The first k of `ranking` the rules allow, computed here."""
    out: list[str] = []
    per: Counter = Counter()
    for sku in ranking:
        if sku in viewed or sku in unavailable or sku in out:
            continue
        category = (categories or {}).get(sku)
        if cap and category is not None:
            if per[category] == cap:
                continue
            per[category] += 1
        out.append(sku)
        if len(out) == k:
            break
    return out


def _ask(url: str, items: list[str], **fields: object) -> dict:
    response = httpx.post(url + RECS, json={"session_id": "s-1", "items": items, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def _logged(home: Path, exposure_id: str) -> dict:
    return next(r for r in _log_records(home) if r.get("id") == exposure_id)


# --- /docs --------------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_load_nothing_from_another_host(server: str):
    page = httpx.get(f"{server}/docs")
    assert page.status_code == 200
    parser = _Links()
    parser.feed(page.text)
    assert len(parser.links) >= 3, parser.links  # the script, the style sheet, the icon
    for link in parser.links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"/docs loads {link} from another host"
        asset = httpx.get(server + link)
        assert asset.status_code == 200 and len(asset.content) > 100, link
    assert "'/openapi.json'" in page.text
    assert httpx.get(f"{server}/openapi.json").status_code == 200
    assert httpx.get(f"{server}/redoc").status_code == 404  # off: it needs a CDN


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine to render /docs")
def test_docs_render_the_operations_in_headless_chromium(server: str, tmp_path: Path):
    profile = tmp_path / "profile"
    profile.mkdir()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom"]
    dom = subprocess.run(
        [CHROMIUM, *flags, f"{server}/docs"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "operations-recommendations-recommend_v1_recommendations_post" in dom, dom[-2000:]
    assert "operations-conversion-score_conversion_v1_conversion_score_post" in dom


# --- business rules -----------------------------------------------------------------------------


def test_viewed_and_unavailable_products_are_never_shown_and_k_remain(server: str, state: dict):
    ranking, viewed, unavailable = state["ranking"], state["viewed"], state["unavailable"]
    answer = _ask(server, viewed, k=K)
    assert answer["path"] == "model"
    assert answer["items"] == allowed(ranking, K, viewed, unavailable)
    assert len(answer["items"]) == K
    record = _logged(state["home"], answer["exposure_id"])
    assert record["items"] == answer["items"]  # the log holds what was shown
    assert record["rules"] == {
        "exclude_viewed": True,
        "exclude_unavailable": True,
        "max_per_category": 0,
    }
    # each rule off by the request's own fields
    both_off = _ask(server, viewed, k=K, exclude_viewed=False, exclude_unavailable=False)
    assert both_off["items"] == ranking[:K]
    assert set(both_off["items"]) & set(viewed)  # the rule does change this answer
    viewed_only = _ask(server, viewed, k=K, exclude_unavailable=False)
    assert viewed_only["items"] == allowed(ranking, K, viewed)


def test_a_cap_per_category_still_returns_k(server: str, state: dict):
    ranking, viewed, categories = state["ranking"], state["viewed"], state["categories"]
    answer = _ask(server, viewed, k=K, max_per_category=1)
    expected = allowed(ranking, K, viewed, state["unavailable"], categories, cap=1)
    assert answer["items"] == expected and len(expected) == K
    counts = Counter(categories[s] for s in answer["items"] if categories[s] is not None)
    assert max(counts.values()) == 1
    assert _logged(state["home"], answer["exposure_id"])["rules"]["max_per_category"] == 1


def test_one_product_and_no_product_follow_the_rules(server: str, state: dict):
    model, unavailable = state["model"], state["unavailable"]
    sku = state["viewed"][0]  # one known product: its list, unless too few of it pass
    single = _ask(server, [sku], k=5)
    assert single["items"] == allowed(model.recommend([sku], 200), 5, [sku], unavailable)
    cold = _ask(server, [], k=K)  # popular products, the unavailable ones left out
    assert cold["path"] == "popularity"
    assert cold["items"] == allowed(model.recommend([], 200), K, (), unavailable)
    listed = httpx.get(f"{server}/v1/recommendations/products/{sku}", params={"k": 5}).json()
    lookup = load_version(state["published"], "recommender", "champion").lookup[sku]
    assert listed["items"] == allowed(lookup, 5, [sku], unavailable)


def test_a_changed_catalogue_is_read_within_a_reload(server: str, state: dict):
    catalogue = state["catalogue"]
    before = catalogue.read_text()
    shown = _ask(server, state["viewed"], k=K)["items"]
    gone = shown[0]
    kept = [line for line in before.splitlines() if not line.startswith(f"{gone},")]
    try:
        catalogue.write_text("\n".join(kept) + "\n")
        deadline = time.monotonic() + 5
        while gone in _ask(server, state["viewed"], k=K)["items"]:
            assert time.monotonic() < deadline, f"{gone} still shown 5 s after it left"
            time.sleep(0.1)
    finally:
        catalogue.write_text(before)


def test_exploration_shuffles_the_allowed_products(state: dict):
    """Every answer explored, no catalogue: the shown k are the shuffle of the allowed top M,
    drawn as the server draws it, with the propensities of that shuffle; a rule that needs a
    catalogue is refused naming the field."""
    home, viewed, ranking = state["home"], state["viewed"], state["ranking"]
    exploration = Exploration(share=1.0, pool=20)
    m = exploration.size(K)
    flags = ("--explore", "1", "--explore-pool", "20")
    with serve(home, home / "explore.log", *flags, env={}) as (url, _):
        answers = [_ask(url, viewed, k=K) for _ in range(5)]
        refused = httpx.post(
            url + RECS, json={"session_id": "s", "items": [], "max_per_category": 1}
        )
    top_m = allowed(ranking, m, viewed)
    for answer in answers:
        rng = np.random.default_rng(uuid.UUID(answer["exposure_id"]).int)
        assert answer["items"] == explore(top_m, K, exploration, rng).items
        record = _logged(home, answer["exposure_id"])
        assert record["items"] == answer["items"] and record["explored"] is True
        assert record["propensities"] == pytest.approx([1 / m] * K)
    assert refused.status_code == 422
    assert "max_per_category" in refused.json()["message"]
    assert "SKIFF_SERVE_CATALOGUE" in refused.json()["message"]


def test_rule_settings(monkeypatch: pytest.MonkeyPatch):
    for name in ("SKIFF_SERVE_EXCLUDE_VIEWED", "SKIFF_SERVE_CATALOGUE"):
        monkeypatch.delenv(name, raising=False)
    assert ServeConfig.from_env().exclude_viewed is True
    monkeypatch.setenv("SKIFF_SERVE_EXCLUDE_VIEWED", "off")
    assert ServeConfig.from_env().exclude_viewed is False
    monkeypatch.setenv("SKIFF_SERVE_EXCLUDE_VIEWED", "maybe")
    with pytest.raises(ConfigError, match="SKIFF_SERVE_EXCLUDE_VIEWED='maybe'"):
        ServeConfig.from_env()
    monkeypatch.delenv("SKIFF_SERVE_EXCLUDE_VIEWED")
    monkeypatch.setenv("SKIFF_SERVE_MAX_PER_CATEGORY", "2")
    with pytest.raises(ConfigError, match="set SKIFF_SERVE_CATALOGUE"):
        ServeConfig.from_env()


# --- one contract for ingestion and serving -----------------------------------------------------

GOOD = {
    "event_type": "event_product",
    "product_action": "detail",
    "product_sku": "p",
    "event_at": int(ms(DAY, 1)),
}
QUARANTINED = {  # reason: (the request's session id, changes to GOOD) of a row ingestion refuses
    "missing_session_id": ("  ", {}),
    "bad_event_type": ("s", {"event_type": "search"}),
    "bad_timestamp": ("s", {"event_at": "1.7e12"}),  # pydantic alone reads it as a time
    "timestamp_outside_day": ("s", {"event_at": int(ms(DAY, -1))}),
    "bad_product_action": ("s", {"event_type": "pageview", "product_sku": None}),
    "missing_product_sku": ("s", {"product_action": "add", "product_sku": " "}),
}
FIELD = {"session_id_hash": "session_id", "event_type": "events.0.event_type"}
FIELD |= {"server_timestamp_epoch_ms": "events.0.event_at"}
FIELD |= {"product_action": "events.0.product_action", "product_sku_hash": "events.0.product_sku"}


@pytest.mark.parametrize("reason", contract.REJECT_REASONS)
def test_what_ingestion_quarantines_the_server_refuses_for_the_same_reason(
    server: str, reason: str
):
    session, changes = QUARANTINED[reason]
    event = {**GOOD, **changes}
    row = [session, event["event_type"], event["product_action"], event["product_sku"]]
    frame = pd.DataFrame(
        [[*row, str(event["event_at"]), None]], columns=list(contract.EVENT_COLUMNS), dtype=object
    )
    assert contract.validate_events(frame, DAY).rejected["reason"].tolist() == [reason]
    response = httpx.post(server + SCORE, json={"session_id": session, "events": [event]})
    if reason in contract.LANDING_DAY_REASONS:  # a served session has no landing day
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 422, response.text
    body = response.json()
    assert [d["type"] for d in body["detail"]] == [reason]
    field = FIELD[contract.REASON_COLUMNS[reason]]
    assert body["message"].startswith(f"{field}: {reason}: {contract.REASON_RULES[reason]}")


def test_the_contract_also_holds_for_recommendations_and_cleans_what_it_keeps(
    server: str, state: dict
):
    blank = httpx.post(server + RECS, json={"session_id": " ", "items": []})
    assert blank.status_code == 422
    assert blank.json()["detail"][0]["type"] == "missing_session_id"
    # values ingestion would load after cleaning score like the clean ones
    clean = {"session_id": "s", "events": [GOOD]}
    padded = {"session_id": " s ", "events": [{**GOOD, "event_type": " Event_Product"}]}
    scores = [httpx.post(server + SCORE, json=body).json() for body in (clean, padded)]
    assert scores[0]["probability"] == scores[1]["probability"]
    for at in (dt.datetime(2100, 1, 1).isoformat(), 1767571201000.0, True, "-5"):
        late = {**GOOD, "event_at": at}
        refused = httpx.post(server + SCORE, json={"session_id": "s", "events": [late]})
        assert refused.json()["detail"][0]["type"] == "bad_timestamp", at
        assert refused.json()["message"].startswith("events.0.event_at: bad_timestamp")


def test_an_interleaved_list_keeps_the_cap_per_category():
    """Two lists each within the cap can break it together: the draft is capped again, each
    kept item with its team. (No HTTP: the interleaving servers are tests/test_serving_explore.)"""
    categories = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "n1": None, "n2": None}
    lists = {"champion": ["a1", "b1", "n1"], "challenger": ["a2", "b2", "n2"]}
    rules = Rules(catalogue=Catalogue(categories), max_per_category=1)
    models = {role: Loaded("recommender", role, None, None) for role in lists}
    variants = (Variant("treatment", "challenger", 0.5), Variant("control", "champion", 0.5))
    experiment = Experiment("recs", "recommender", variants, mode="interleaving")
    snapshot = Snapshot({("recommender", r): m for r, m in models.items()}, {})

    async def top(model: Loaded, n: int) -> Recommended:
        return Recommended(lists[model.role][:n], "model", 0)

    for seed in range(20):
        exposure_id = uuid.UUID(int=seed).hex
        assignment = Assignment(
            snapshot, experiment, variants[0], models["challenger"], exposure_id
        )
        shown = asyncio.run(interleaved(assignment, top, 4, [], Metrics(), rules))
        rng = np.random.default_rng(uuid.UUID(exposure_id).int)
        drafted, teams = team_draft(lists, 6, rng)
        expected = allowed(drafted, 4, categories=categories, cap=1)
        assert shown.items == expected, seed
        assert shown.logged["teams"] == [teams[drafted.index(s)] for s in expected]
        assert len(shown.items) == 4  # a1|a2, b1|b2, n1, n2
