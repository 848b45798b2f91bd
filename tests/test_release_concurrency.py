"""Release transitions at once (issue #15): a training run admitting challengers, an operator
rolling them back and the rollout controller ramping and promoting them, in threads and in
separate processes, on a local registry and on the S3 test server. Afterwards (and at every
look the workers take meanwhile) `load_state` does not raise, rollout.json names the
champion and challenger roles.json names, the server's experiments.json entry is the one the
state implies, and the published pointers are the roles'.

Before the fix `admit`, `promote` and `rollback` wrote rollout.json after leaving the lock and
the controller's ramp wrote it without the lock, so a rollback between a ramp's look and its
write (or between an admit's role change and its rollout write) left a rollout.json naming a
challenger roles.json no longer had, and every later `load_state` raised.

The workers are module functions so that a spawned process can import them; the registry is a
real one (files, or the moto server), never a mock.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import pytest

from ml import release
from ml.registry import LOCK, ROLES, ArtifactError, Registry, published_manifest

PROBLEM = "recommender"
POLICY = release.Policy(
    stages=(release.Stage("shadow", 0.0), release.Stage("10%", 0.1), release.Stage("50%", 0.5)),
    min_sessions=1,
    min_hours=0,
)
# What a transition may refuse when another one got there first: not an error of the race.
EXPECTED = ("has no challenger to roll back", "is already the")
ROLES_OF = ("operator", "trainer", "controller") * 2  # six workers, two of each


def _versions(root: str, tmp_path: Path, n: int = 4) -> list[str]:
    registry = Registry(root)
    versions = []
    for i in range(n):
        folder = tmp_path / f"model-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(f"model {i}".encode())
        manifest = registry.register(
            PROBLEM, folder, algorithm=f"algo{i}", params={}, metrics={}, training_window={}
        )
        versions.append(manifest.version)
    return versions


def _look(registry: Registry, published: str) -> str:
    """One controller look: read the state (unlocked, as the rollout asset does), decide the
    next step without evidence (advance, or promote at the last stage) and apply it. Returns
    "ramp" when it tried to move the challenger, "hold" when there was none."""
    state = release.load_state(registry, PROBLEM)
    if state is None:
        return "hold"
    if state.challenger is None:
        decision = release.Decision(
            "hold", state.stage, state.stage_name, state.traffic, "no challenger"
        )
    elif state.stage + 1 < len(POLICY.stages):
        nxt = POLICY.stages[state.stage + 1]
        decision = release.Decision("advance", state.stage + 1, nxt.name, nxt.traffic, "ramp")
    else:
        decision = release.Decision("promote", None, None, 1.0, "superior")
    release.apply(registry, published, state, decision)
    return "hold" if decision.action == "hold" else "ramp"


def _transitions(
    root: str,
    published: str,
    versions: list[str],
    role: str,
    seed: int,
    steps: int,
    start,
    report: str,
) -> None:
    """One worker: `steps` transitions of its kind once all have started, then a report (JSON)
    of what it did. A refusal in EXPECTED is another worker having got there first; anything
    else is reported as the error and ends the worker (after a corrupted state, every
    transition raises)."""
    registry = Registry(root)
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    error = None
    start.wait()
    for i in range(steps):
        try:
            if role == "operator":
                release.rollback(registry, published, PROBLEM, f"operator {seed}-{i}")
                done["rollback"] += 1
            elif role == "trainer":
                version = rng.choice(versions)
                release.admit(
                    registry, published, PROBLEM, version, f"gates {seed}-{i}", policy=POLICY
                )
                done["admit"] += 1
            else:
                done[_look(registry, published)] += 1
        except release.ReleaseError as exc:
            if not any(text in str(exc) for text in EXPECTED):
                error = f"{role} step {i}: {traceback.format_exc()}"
                break
            done["refused"] += 1
        except Exception:
            error = f"{role} step {i}: {traceback.format_exc()}"
            break
        time.sleep(rng.random() * 0.002)
    Path(report).write_text(json.dumps({"error": error, "done": done}))


def _run(kind: str, args_of, n: int, tmp_path: Path) -> list[dict]:
    """Start n workers (threads or spawned processes) together; their reports."""
    out = tmp_path / f"reports-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    if kind == "threads":
        start = threading.Barrier(n)
        make = threading.Thread
    else:  # spawn: a fresh interpreter per worker, as separate pods would be
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(n)
        make = context.Process
    workers = [
        make(target=_transitions, args=(*args_of(w), start, str(out / f"w{w}"))) for w in range(n)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert not any(w.is_alive() for w in workers), "a worker did not finish in 300 s"
    if kind == "processes":
        codes = [w.exitcode for w in workers]
        assert codes == [0] * n, f"worker processes failed: exit codes {codes}"
    reports = [json.loads(p.read_text()) for p in sorted(out.iterdir())]
    assert len(reports) == n, f"{n - len(reports)} worker(s) wrote no report"
    return reports


def _assert_consistent(root: str, published: str, when: str) -> release.RolloutState:
    registry = Registry(root)
    roles = registry.roles(PROBLEM)
    stored = registry.rollout(PROBLEM)
    try:
        state = release.load_state(registry, PROBLEM)
    except release.ReleaseError as exc:
        pytest.fail(f"{when}: load_state raised: {exc}")
    assert stored is not None, f"{when}: no rollout.json beside roles.json {roles}"
    assert state is not None and state.champion == roles["champion"], f"{when}: state {state}"
    assert state.challenger == roles.get("challenger"), f"{when}: state {state}, roles {roles}"
    assert (stored["champion"], stored["challenger"]) == (
        roles["champion"],
        roles.get("challenger"),
    ), f"{when}: rollout.json {stored} against roles.json {roles}"
    served = release.read_serving_config(published)[PROBLEM]
    assert served == release.serving_config(state), f"{when}: experiments.json {served}"
    for role in ROLES:
        try:
            pointer = published_manifest(published, PROBLEM, role, keys=registry.keys).version
        except ArtifactError:
            pointer = None
        assert pointer == roles.get(role), f"{when}: published {role} {pointer}, roles {roles}"
    assert not registry.fs.exists(registry._path(PROBLEM, LOCK)), f"{when}: lock left behind"
    return state


@pytest.fixture(params=["local", "s3"])
def roots(request, tmp_path) -> tuple[str, str]:
    """The registry's URL and the published root's."""
    if request.param == "local":
        return str(tmp_path / "registry"), str(tmp_path / "published")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/registry", f"{bucket}/published"


THREAD_ROUNDS, THREAD_STEPS = 12, 8
PROCESS_STEPS = 40
RACED = ("admit", "rollback", "ramp")  # the transitions each test must have seen at once


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_transitions_keep_rollout_and_roles_in_step(roots, tmp_path, kind):
    root, published = roots
    local = root.startswith("/")
    versions = _versions(root, tmp_path)
    release.bootstrap(Registry(root), published, PROBLEM, versions[0], "first champion")
    n = len(ROLES_OF)
    if kind == "threads":  # many rounds, each started together, checked after each
        rounds, steps = (THREAD_ROUNDS, THREAD_STEPS) if local else (3, 6)
    else:  # one spawn (a second or two per interpreter), many steps, checked at the end
        # on S3 each step is slower: 6 steps once gave no controller a challenger to ramp, and
        # 12 once none either (three test workers on two cores): a second or third round
        # then, until every kind of transition has raced (the check after the loop)
        rounds, steps = 3, PROCESS_STEPS if local else 12
    done: Counter[str] = Counter()
    for r in range(rounds):
        if kind == "processes" and all(done[action] for action in RACED):
            break
        reports = _run(
            kind,
            lambda w, r=r: (root, published, versions, ROLES_OF[w], 1000 * r + w, steps),
            n,
            tmp_path,
        )
        _assert_consistent(root, published, f"after round {r}")
        errors = [report["error"] for report in reports if report["error"]]
        assert not errors, f"round {r}: a transition failed:\n" + "\n".join(errors)
        for report in reports:
            done.update(report["done"])
    # the race was run: admits, rollbacks and looks that tried to move a challenger, at once
    assert all(done[action] for action in RACED), done
