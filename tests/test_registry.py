"""The model registry on a real folder and on a non-local fsspec filesystem (memory://)."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ml.registry import ArtifactError, Registry, load_published


def _model(tmp_path: Path, weights: bytes = b"\x00\x01weights") -> Path:
    folder = tmp_path / f"model-{uuid.uuid4().hex[:6]}"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(weights)
    (folder / "sub" / "vocab.json").write_text('{"a": 1}')
    return folder


def _register(registry: Registry, folder: Path, auc: float = 0.8):
    return registry.register(
        "conversion",
        folder,
        algorithm="hgb",
        params={"max_depth": 3},
        metrics={"pr_auc": auc},
        training_window={"start": "2026-01-05", "end": "2026-01-18"},
    )


@pytest.fixture(params=["local", "memory"])
def registry(request, tmp_path) -> Registry:
    if request.param == "local":
        return Registry(tmp_path / "registry")
    return Registry(f"memory://skiff-test-{uuid.uuid4().hex}")


def test_round_trip_with_manifest(registry, tmp_path):
    manifest = _register(registry, _model(tmp_path))
    assert manifest.files.keys() == {"weights.bin", "sub/vocab.json"}
    assert len(manifest.sha256) == 64 and manifest.code_version
    assert registry.manifest("conversion", manifest.version) == manifest
    folder = registry.fetch("conversion", manifest.version)
    assert (folder / "weights.bin").read_bytes() == b"\x00\x01weights"
    assert [m.version for m in registry.versions("conversion")] == [manifest.version]


@pytest.mark.parametrize("damage", ["tamper", "truncate", "delete"])
def test_damaged_artifact_is_refused_naming_the_file(registry, tmp_path, damage):
    manifest = _register(registry, _model(tmp_path, weights=b"w" * 1000))
    path = registry._path("conversion", "versions", manifest.version, "weights.bin")
    if damage == "delete":
        registry.fs.rm(path)
    else:
        data = b"x" * 1000 if damage == "tamper" else b"w" * 10
        with registry.fs.open(path, "wb") as handle:
            handle.write(data)
    with pytest.raises(ArtifactError, match=r"weights\.bin"):
        registry.fetch("conversion", manifest.version, tmp_path / "fetched")


def test_roles_history_and_publish(registry, tmp_path):
    first = _register(registry, _model(tmp_path, b"first"), auc=0.7)
    second = _register(registry, _model(tmp_path, b"second"), auc=0.9)
    assert registry.role("conversion", "champion") is None
    registry.assign("conversion", "champion", first.version, "first model")
    registry.assign("conversion", "challenger", second.version, "beats nothing yet")
    registry.assign("conversion", "champion", second.version, "gates passed, pr_auc 0.9 > 0.7")
    assert registry.role("conversion", "champion") == second
    assert [h["reason"] for h in registry.history("conversion")][-1].startswith("gates passed")
    assert registry.history("conversion")[-1]["previous"] == first.version
    with pytest.raises(ArtifactError, match="not in the registry"):
        registry.assign("conversion", "champion", "no-such-version", "typo")

    target = tmp_path / "published"
    assert registry.publish("conversion", target) == {
        "champion": second.version,
        "challenger": second.version,
    }
    manifest, folder = load_published(target, "conversion", "champion")
    assert manifest == second and (folder / "weights.bin").read_bytes() == b"second"
    assert not list(target.rglob("*.tmp-*"))  # nothing half-written left behind

    (folder / "weights.bin").write_bytes(b"evil")
    with pytest.raises(ArtifactError, match="refusing to load"):
        load_published(target, "conversion", "champion")
    with pytest.raises(ArtifactError, match="nothing is published"):
        load_published(target, "recommender", "champion")


def test_history_lines_carry_who_decided_the_stage_and_the_evidence(registry, tmp_path):
    first = _register(registry, _model(tmp_path, b"first"), auc=0.7)
    second = _register(registry, _model(tmp_path, b"second"), auc=0.9)
    at = dt.datetime(2026, 2, 1, 9, 30, tzinfo=dt.UTC)
    registry.assign("conversion", "champion", first.version, "bootstrap", decided_by="bootstrap")
    line = registry.assign(
        "conversion",
        "challenger",
        second.version,
        "gates passed",
        decided_by="offline gates",
        stage="shadow",
        traffic=0,
        evidence={"pr_auc": np.float64(0.9), "prefixes": np.int64(1200), "lift": math.nan},
        at=at,
    )
    assert line == registry.history("conversion")[-1]
    assert line == {
        "at": "2026-02-01T09:30:00+00:00",
        "problem": "conversion",
        "version": second.version,
        "role": "challenger",
        "previous": None,
        "stage": "shadow",
        "traffic": 0.0,
        "decided_by": "offline gates",
        "reason": "gates passed",
        "evidence": {"pr_auc": 0.9, "prefixes": 1200, "lift": None},
    }
    # several pointers in one write, lines recorded apart: a promotion
    previous = registry.set_roles("conversion", {"champion": second.version, "challenger": None})
    assert previous == {"champion": first.version, "challenger": second.version}
    assert registry.roles("conversion") == {"champion": second.version}
    registry.record("conversion", "retired", first.version, "replaced", decided_by="operator")
    assert [h["role"] for h in registry.history("conversion")] == [
        "champion",
        "challenger",
        "retired",
    ]
    with pytest.raises(ValueError, match="history role must be one of"):
        registry.record("conversion", "loser", first.version, "no such role")
    with pytest.raises(ValueError, match="evidence 'table' must be a number or text"):
        registry.record("conversion", "retired", first.version, "x", evidence={"table": [1]})
    with pytest.raises(ValueError, match="role must be one of"):
        registry.set_roles("conversion", {"retired": first.version})


def test_rollout_state_round_trip(registry):
    assert registry.rollout("conversion") is None
    state = {"problem": "conversion", "champion": "v1", "challenger": "v2", "stage": 2}
    registry.set_rollout("conversion", state)
    assert registry.rollout("conversion") == state
    assert not [p for p in registry.fs.find(registry.root) if ".tmp-" in p]


def _read_published(target: Path, weights: dict[str, bytes], stop, seen: Counter, failures: list):
    """What the server does, in a loop: read the pointer, verify the version, read a file."""
    while not stop.is_set():
        try:
            manifest, folder = load_published(target, "conversion", "champion")
            if (folder / "weights.bin").read_bytes() != weights[manifest.version]:
                failures.append(f"{manifest.version}: weights of another version")
            seen[manifest.version] += 1
        except Exception as exc:  # a torn pointer, a missing or unverified file: all failures
            failures.append(repr(exc))


def test_publish_is_atomic_for_concurrent_readers(tmp_path):
    """Readers loop on the published champion while new versions are published and the
    pointer moves back and forth: every read is a complete version whose files verify."""
    registry = Registry(tmp_path / "registry")
    target = tmp_path / "published"
    weights: dict[str, bytes] = {}
    for i in range(12):
        folder = _model(tmp_path, weights=f"model {i}\n".encode() * 5000)
        for j in range(100):  # a manifest of about 10 kB: a torn write has room to show
            (folder / "sub" / f"part-{j:03d}.txt").write_text(f"{i}-{j}")
        version = _register(registry, folder).version
        weights[version] = (folder / "weights.bin").read_bytes()
    versions = list(weights)
    registry.assign("conversion", "champion", versions[0], "first")
    registry.publish("conversion", target, roles=("champion",))

    stop, seen, failures = threading.Event(), Counter(), []
    readers = [
        threading.Thread(target=_read_published, args=(target, weights, stop, seen, failures))
        for _ in range(3)
    ]
    for reader in readers:
        reader.start()
    try:
        for version in versions[1:]:  # new versions: files copied, then the pointer
            registry.assign("conversion", "champion", version, "new")
            registry.publish("conversion", target, roles=("champion",))
        deadline = time.monotonic() + 2
        i = 0
        while time.monotonic() < deadline:  # already published: only the pointer moves
            i += 1
            registry.assign("conversion", "champion", versions[i % len(versions)], "again")
            registry.publish("conversion", target, roles=("champion",))
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    assert not failures, (len(failures), Counter(failures).most_common(3))
    assert len(seen) >= 6 and sum(seen.values()) > 200, seen
    assert not list(target.rglob("*.tmp-*"))
