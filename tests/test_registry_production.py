"""The registry in production: concurrent writers (threads and processes, local disk and a real
S3-compatible server), temporary copies removed, signed manifests and key rotation, and
scikit-learn artifacts that cannot run code when loaded.

New API is imported inside the tests, so each test fails on the old code for its own reason
(lost lines, a leaked folder, an accepted forgery), not all at import.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import pickle
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import fsspec.implementations.memory
import numpy as np
import pandas as pd
import pytest

from ml import registry as reg
from ml.conversion import models
from ml.conversion.features import FEATURES, Batch
from ml.registry import ArtifactError, Registry
from tests.registry_writers import count_steps, write_lines

PROBLEM = "conversion"
KEY = b"k" * 32
OLD_KEY = b"o" * 32


def _model(tmp_path: Path, weights: bytes) -> Path:
    folder = tmp_path / f"model-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(weights)
    (folder / "config.json").write_text('{"a": 1}')
    return folder


def _register(registry: Registry, tmp_path: Path, weights: bytes = b"weights"):
    return registry.register(
        PROBLEM,
        _model(tmp_path, weights),
        algorithm="hgb",
        params={"max_iter": 3},
        metrics={"pr_auc": 0.5},
        training_window={"start": "2026-01-05", "end": "2026-01-18"},
    )


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "registry")
    return f"{request.getfixturevalue('s3_bucket')}/registry"


# --- concurrent writers ----------------------------------------------------------------------

THREADS, PROCESSES, ROUNDS = 8, 6, 6


def _versions(root: str, tmp_path: Path, n: int = 3) -> list[str]:
    registry = Registry(root)
    return [_register(registry, tmp_path, f"w{i}".encode()).version for i in range(n)]


def _run(kind: str, target, args_of, n: int) -> None:
    if kind == "threads":
        start = threading.Barrier(n)
        workers = [threading.Thread(target=target, args=(*args_of(w), start)) for w in range(n)]
    else:  # spawn: a fresh interpreter per writer, as separate pods would be
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(n)
        workers = [context.Process(target=target, args=(*args_of(w), start)) for w in range(n)]
    failures = []
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        if kind == "processes" and worker.exitcode != 0:
            failures.append(worker.exitcode)
    assert not failures, f"writer processes failed: exit codes {failures}"


@pytest.mark.slow  # 6 to 13 s each against the one-request-at-a-time S3 server
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_writers_keep_every_history_line(root, tmp_path, kind):
    """Writers at once each move the challenger and record a ramp step: every line is kept,
    and roles.json is valid and names a version that was written. (Before the lock, each
    writer read the history, appended and rewrote it whole: lines were lost.)"""
    versions = _versions(root, tmp_path)
    n = THREADS if kind == "threads" else PROCESSES
    _run(kind, write_lines, lambda w: (root, w, versions, ROUNDS), n)

    registry = Registry(root)
    history = registry.history(PROBLEM)
    assert len(history) == 2 * n * ROUNDS
    reasons = {line["reason"] for line in history}
    assert reasons == {
        f"{p}w{w}-{i}" for p in ("", "ramp ") for w in range(n) for i in range(ROUNDS)
    }
    roles = json.loads(registry.fs.cat_file(registry._path(PROBLEM, "roles.json")))
    assert roles["challenger"] in versions
    # The pointer is the last assign's: its line is the last challenger move in the history.
    moves = [line for line in history if not line["reason"].startswith("ramp")]
    assert moves[-1]["version"] == roles["challenger"]
    assert not registry.fs.exists(registry._path(PROBLEM, reg.LOCK))  # released


@pytest.mark.slow  # 6 to 13 s each against the one-request-at-a-time S3 server
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_rollout_read_modify_write_under_the_lock_loses_nothing(root, tmp_path, kind):
    n = THREADS if kind == "threads" else PROCESSES
    _run(kind, count_steps, lambda w: (root, w, ROUNDS), n)
    state = Registry(root).rollout(PROBLEM)
    assert state["steps"] == n * ROUNDS
    assert sorted(state["by"]) == sorted(f"w{w}-{i}" for w in range(n) for i in range(ROUNDS))


def test_a_held_lock_times_out_naming_the_lock_and_its_owner(tmp_path):
    registry = Registry(tmp_path / "registry", lock_timeout=0.5)
    other = Registry(tmp_path / "registry", lock_timeout=0.5)
    entered = threading.Event()
    release = threading.Event()

    def hold():
        with other.locked(PROBLEM):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        owner = json.loads((tmp_path / "registry" / PROBLEM / reg.LOCK).read_text())["owner"]
        with pytest.raises(reg.RegistryLockError, match=r"roles\.lock") as refused:
            registry.set_rollout(PROBLEM, {"stage": 1})
        assert owner in str(refused.value)
    finally:
        release.set()
        holder.join()
    registry.set_rollout(PROBLEM, {"stage": 1})  # free again
    assert registry.rollout(PROBLEM) == {"stage": 1}


class _NoConditionalWritesFS(fsspec.implementations.memory.MemoryFileSystem):
    """A working store under a protocol Skiff has no exclusive create or conditional delete
    for (as gs:// or az:// today)."""

    protocol = "unguarded"
    store: dict = {}
    pseudo_dirs = [""]


def test_a_store_without_conditional_writes_is_refused_before_any_write():
    fsspec.register_implementation("unguarded", _NoConditionalWritesFS, clobber=True)
    registry = Registry("unguarded://bucket/registry")
    with pytest.raises(reg.RegistryLockError, match=r"unguarded://.*local disk and S3"):
        registry.set_rollout(PROBLEM, {"stage": 1})
    assert not registry.fs.exists(registry._path(PROBLEM))
    # the same store under a protocol with conditional writes takes the lock and writes
    memory = Registry(f"memory://{uuid.uuid4().hex}/registry")
    memory.set_rollout(PROBLEM, {"stage": 1})
    assert memory.rollout(PROBLEM) == {"stage": 1}


def test_an_expired_lock_of_a_crashed_writer_is_broken(root):
    """A writer that died holding the lock leaves it behind; after its lease, the next writer
    breaks it (once) and writes."""
    registry = Registry(root, lock_timeout=10)
    lock = registry._path(PROBLEM, reg.LOCK)
    registry.fs.makedirs(registry._path(PROBLEM), exist_ok=True)
    registry.fs.pipe_file(lock, json.dumps({"owner": "crashed", "expires_at": 1.0}).encode())
    registry.set_rollout(PROBLEM, {"stage": 2})
    assert registry.rollout(PROBLEM) == {"stage": 2}
    assert not registry.fs.exists(lock)
    assert not registry.fs.glob(f"{lock}.broken-*")


@pytest.fixture
def short_margin(monkeypatch) -> float:
    """A lease margin of 0.1 s, so a test outlives a lease in a fraction of a second."""
    monkeypatch.setattr(reg, "_LEASE_MARGIN", 0.1)
    return 0.1


def test_a_writer_past_its_lease_writes_nothing(tmp_path, short_margin):
    """A writer paused beyond its lease may have lost the lock to another: it must not write."""
    registry = Registry(tmp_path / "registry", lock_lease=3 * short_margin)
    with pytest.raises(reg.RegistryLockError, match="lease"), registry.locked(PROBLEM):
        threading.Event().wait(0.3)
        registry.set_rollout(PROBLEM, {"stage": 3})
    assert registry.rollout(PROBLEM) is None


def test_a_lease_must_outlast_twice_the_margin(tmp_path):
    with pytest.raises(ValueError, match=r"lock_lease must be more than 10 s, got 10"):
        Registry(tmp_path / "registry", lock_lease=2 * reg._LEASE_MARGIN)
    Registry(tmp_path / "registry", lock_lease=2 * reg._LEASE_MARGIN + 1)


# Another writer, in its own process: says it is ready, takes the lock (breaking an expired
# one), prints its owner id, and holds the lock until its stdin closes.
_TAKE_AND_HOLD = """
import json, sys
from ml.registry import LOCK, Registry
registry = Registry(sys.argv[1], lock_timeout=30)
print("ready", flush=True)
with registry.locked(sys.argv[2]):
    print(json.loads(registry.fs.cat_file(registry._path(sys.argv[2], LOCK)))["owner"], flush=True)
    sys.stdin.read()
"""


@contextmanager
def _before_deleting(registry: Registry, action) -> Iterator[None]:
    """Run `action` once, when `registry` is about to delete an object (after it read it):
    a writer paused at the worst moment. The store is real; only the timing is forced."""
    fired = []

    def once() -> None:
        if not fired:
            fired.append(True)
            action()

    if reg.is_local(registry.fs):
        rm = registry.fs.rm

        def paused_rm(path, *args, **kwargs):
            once()
            return rm(path, *args, **kwargs)

        registry.fs.rm = paused_rm  # the instance is shared (cached): put back below
        try:
            yield
        finally:
            del registry.fs.rm
        return

    def before_call(model, **kwargs) -> None:
        if model.name in {"DeleteObject", "DeleteObjects"}:
            once()

    registry.fs.connect()  # the client every request of this filesystem goes through
    events = registry.fs.s3.meta.events
    events.register("before-call.s3", before_call)
    try:
        yield
    finally:
        events.unregister("before-call.s3", before_call)


def test_a_holder_released_after_its_lock_was_re_taken_keeps_the_new_lock(
    root, short_margin, monkeypatch
):
    """A holder paused past its lease: another writer breaks its lock and takes it. When the
    paused holder releases, having just read its lock, the new holder's lock must stay.
    (Before, a release past the margin read the owner, then deleted whatever was there.)"""
    import select
    import subprocess
    import sys

    from skiff.settings import REPO_ROOT

    registry = Registry(root, lock_lease=3 * short_margin)
    lock = registry._path(PROBLEM, reg.LOCK)
    other: list[subprocess.Popen] = []
    taken_by: list[str] = []

    def another_writer_takes_it() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_AND_HOLD, root, PROBLEM],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        other.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        # wait for it to hold the lock, or give up if this writer's delete excludes it
        if select.select([proc.stdout], [], [], 3)[0]:
            taken_by.append(proc.stdout.readline().strip())

    try:
        with _before_deleting(registry, another_writer_takes_it), registry.locked(PROBLEM):
            owner = json.loads(registry.fs.cat_file(lock))["owner"]
            threading.Event().wait(4 * short_margin)  # past the lease
        assert other, "the holder did not try to delete its lock"
        if not taken_by:  # it waited for this release: it holds the lock now
            taken_by.append(other[0].stdout.readline().strip())
        assert taken_by[0] and taken_by[0] != owner
        found = registry._read_optional(lock)
        assert found is not None, "the paused holder deleted the new holder's lock"
        assert json.loads(found)["owner"] == taken_by[0]
    finally:
        for proc in other:
            proc.communicate(timeout=60)  # closes its stdin: it releases
    assert other[0].returncode == 0
    assert registry._read_optional(lock) is None  # and its release deleted it


def test_set_roles_writes_its_lines_before_the_pointer(tmp_path):
    registry = Registry(tmp_path / "registry")
    first, second = (_register(registry, tmp_path, w).version for w in (b"1", b"2"))
    registry.assign(PROBLEM, "champion", first, "first")
    line = {"role": "champion", "version": second, "reason": "promoted", "previous": first}
    previous = registry.set_roles(PROBLEM, {"champion": second, "challenger": None}, lines=[line])
    assert previous == {"champion": first, "challenger": None}
    assert registry.roles(PROBLEM) == {"champion": second}
    assert [(h["version"], h["reason"]) for h in registry.history(PROBLEM)] == [
        (first, "first"),
        (second, "promoted"),
    ]


# --- temporary copies ------------------------------------------------------------------------


def _skiff_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("skiff-"))


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_fetched_and_published_copy_leave_no_temporary_folder(s3_bucket, tmp_path, scratch):
    registry = Registry(f"{s3_bucket}/registry")
    target = f"{s3_bucket}/published"
    manifest = _register(registry, tmp_path, b"remote weights")
    registry.assign(PROBLEM, "champion", manifest.version, "test")
    registry.publish(PROBLEM, target)
    assert _skiff_folders(scratch) == []

    with registry.fetched(PROBLEM, manifest.version) as folder:
        assert (folder / "weights.bin").read_bytes() == b"remote weights"
        assert folder.parent == scratch
    assert not folder.exists()

    with reg.published_copy(target, PROBLEM) as (published, folder):
        assert published.version == manifest.version
        assert (folder / "weights.bin").read_bytes() == b"remote weights"
    assert not folder.exists()

    with (
        pytest.raises(RuntimeError, match="inside"),
        registry.fetched(PROBLEM, manifest.version) as folder,
    ):
        raise RuntimeError("inside the block")
    assert not folder.exists()
    assert _skiff_folders(scratch) == []


def test_a_refused_remote_copy_leaves_no_folder(s3_bucket, tmp_path, scratch):
    registry = Registry(f"{s3_bucket}/registry")
    manifest = _register(registry, tmp_path, b"w" * 100)
    registry.fs.pipe_file(
        registry._path(PROBLEM, "versions", manifest.version, "weights.bin"), b"x"
    )
    with pytest.raises(ArtifactError, match=r"weights\.bin"):
        registry.fetch(PROBLEM, manifest.version)
    assert _skiff_folders(scratch) == []


def test_load_registered_removes_its_copy(s3_bucket, scratch):
    registry = Registry(f"{s3_bucket}/registry")
    batch = _batch(200, seed=1)
    model = models.make_model("logistic").fit(batch, _labels(batch))
    manifest = models.register_model(registry, model, metrics={}, training_window={})
    loaded = models.load_registered(registry, manifest.version)
    assert np.array_equal(loaded.predict_proba(batch), model.predict_proba(batch))
    assert _skiff_folders(scratch) == []


def test_a_local_registry_is_read_in_place_and_kept(tmp_path, scratch):
    registry = Registry(tmp_path / "registry")
    manifest = _register(registry, tmp_path)
    with registry.fetched(PROBLEM, manifest.version) as folder:
        assert folder == tmp_path / "registry" / PROBLEM / "versions" / manifest.version
    assert (folder / "weights.bin").exists()
    assert _skiff_folders(scratch) == []


# --- signed manifests ------------------------------------------------------------------------


def _keys(current: bytes | None = KEY, *previous: bytes):
    return reg.ManifestKeys(current, tuple(previous))


def _manifest_file(registry: Registry, version: str) -> str:
    return registry._path(PROBLEM, "versions", version, reg.MANIFEST)


def _read_json(registry: Registry, path: str) -> dict:
    return json.loads(registry.fs.cat_file(path))


def test_the_signature_is_an_hmac_over_the_canonical_manifest(root, tmp_path):
    registry = Registry(root, keys=_keys())
    manifest = _register(registry, tmp_path)
    stored = _read_json(registry, _manifest_file(registry, manifest.version))
    signature = stored.pop("signature")
    body = json.dumps(stored, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert signature["hmac"] == hmac.new(KEY, body, hashlib.sha256).hexdigest()
    assert signature["key_id"] == reg.key_id(KEY)
    assert KEY.decode() not in json.dumps(signature)
    assert registry.manifest(PROBLEM, manifest.version) == manifest


def _forge(registry: Registry, version: str) -> None:
    """What a writer of the bucket can do: replace a file and its sha256 in the manifest."""
    folder = registry._path(PROBLEM, "versions", version)
    payload = b"the attacker's weights"
    registry.fs.pipe_file(f"{folder}/weights.bin", payload)
    stored = _read_json(registry, f"{folder}/{reg.MANIFEST}")
    stored["files"]["weights.bin"] = hashlib.sha256(payload).hexdigest()
    stored["sha256"] = reg.Manifest.from_json(json.dumps(stored)).sha256
    registry.fs.pipe_file(f"{folder}/{reg.MANIFEST}", json.dumps(stored).encode())


def test_a_forged_manifest_and_file_are_refused_when_a_key_is_set(root, tmp_path):
    registry = Registry(root, keys=_keys())
    manifest = _register(registry, tmp_path)
    _forge(registry, manifest.version)
    for load in (registry.manifest, registry.fetch):
        with pytest.raises(ArtifactError, match=f"{manifest.version}.*signature does not match"):
            load(PROBLEM, manifest.version)
    with pytest.raises(ArtifactError, match="signature does not match"):
        registry.assign(PROBLEM, "champion", manifest.version, "promote the forgery")
    assert registry.roles(PROBLEM) == {} and registry.history(PROBLEM) == []
    # Without signing, the hashes alone are consistent: the forgery passes (the threat).
    forged = Registry(root, keys=_keys(None)).fetch(PROBLEM, manifest.version, tmp_path / "f")
    assert (forged / "weights.bin").read_bytes() == b"the attacker's weights"


def test_an_unsigned_manifest_is_refused_when_a_key_is_set(root, tmp_path):
    manifest = _register(Registry(root, keys=_keys(None)), tmp_path)
    with pytest.raises(ArtifactError, match=f"{manifest.version}.*not signed"):
        Registry(root, keys=_keys()).fetch(PROBLEM, manifest.version)


def test_a_manifest_signed_with_another_key_is_refused(root, tmp_path):
    manifest = _register(Registry(root, keys=_keys(b"x" * 32)), tmp_path)
    with pytest.raises(ArtifactError, match=f"{manifest.version}.*key id {reg.key_id(b'x' * 32)}"):
        Registry(root, keys=_keys()).manifest(PROBLEM, manifest.version)


def test_a_signed_manifest_moved_to_another_version_is_refused(tmp_path):
    registry = Registry(tmp_path / "registry", keys=_keys())
    a, b = (_register(registry, tmp_path, w) for w in (b"a", b"b"))
    path_a, path_b = (Path(_manifest_file(registry, m.version)) for m in (a, b))
    path_b.write_text(path_a.read_text())
    with pytest.raises(ArtifactError, match=f"{b.version}.*not what its path says"):
        registry.manifest(PROBLEM, b.version)


def test_a_published_pointer_is_verified(root, tmp_path):
    registry = Registry(root, keys=_keys())
    target = f"{root}-published"
    manifest = _register(registry, tmp_path)
    registry.assign(PROBLEM, "champion", manifest.version, "test")
    registry.publish(PROBLEM, target)
    assert reg.load_published(target, PROBLEM, keys=_keys())[0] == manifest
    out = Registry(target)
    pointer = out._path(PROBLEM, "champion.json")
    stored = _read_json(out, pointer)
    stored["metrics"]["pr_auc"] = 0.99
    out.fs.pipe_file(pointer, json.dumps(stored).encode())
    with pytest.raises(ArtifactError, match=r"published conversion champion.*does not match"):
        reg.load_published(target, PROBLEM, keys=_keys())
    with (
        pytest.raises(ArtifactError, match="does not match"),
        reg.published_copy(target, PROBLEM, keys=_keys()),
    ):
        pass


def test_published_manifest_reads_no_model_file(root, tmp_path, scratch):
    """Monitoring needs what serves, not the model: the manifest-only reader verifies the
    pointer's signature and copies nothing (it answers with the model's files gone, where a
    loader refuses), and refuses a forged pointer."""
    registry = Registry(root, keys=_keys())
    target = f"{root}-published"
    manifest = _register(registry, tmp_path)
    registry.assign(PROBLEM, "champion", manifest.version, "test")
    registry.publish(PROBLEM, target)
    out = Registry(target)
    for name in manifest.files:
        out.fs.rm(out._path(PROBLEM, manifest.version, name))

    assert reg.published_manifest(target, PROBLEM, keys=_keys()) == manifest
    assert _skiff_folders(scratch) == []
    with (
        pytest.raises(ArtifactError, match="is missing"),
        reg.published_copy(target, PROBLEM, keys=_keys()),
    ):
        pass

    pointer = out._path(PROBLEM, "champion.json")
    stored = _read_json(out, pointer)
    stored["version"] = "a-version-of-my-own"
    out.fs.pipe_file(pointer, json.dumps(stored).encode())
    with pytest.raises(ArtifactError, match=r"published conversion champion.*does not match"):
        reg.published_manifest(target, PROBLEM, keys=_keys())
    with pytest.raises(ArtifactError, match="nothing is published as conversion challenger"):
        reg.published_manifest(target, PROBLEM, "challenger", keys=_keys())


def test_key_rotation(root, tmp_path):
    """Signed by the old key: loadable while it is listed as previous, refused once dropped;
    publishing re-signs the pointer with the new key; `resign` moves versions to it."""
    old = Registry(root, keys=_keys(OLD_KEY))
    manifest = _register(old, tmp_path)
    old.assign(PROBLEM, "champion", manifest.version, "signed by the old key")

    rotating = Registry(root, keys=_keys(KEY, OLD_KEY))
    assert rotating.manifest(PROBLEM, manifest.version) == manifest
    target = f"{root}-published"
    rotating.publish(PROBLEM, target)

    new_only = Registry(root, keys=_keys(KEY))
    with pytest.raises(ArtifactError, match="neither SKIFF_MANIFEST_KEY nor"):
        new_only.manifest(PROBLEM, manifest.version)
    published, _ = reg.load_published(target, PROBLEM, keys=_keys(KEY))  # re-signed
    assert published == manifest

    assert rotating.resign(PROBLEM) == reg.Resigned((manifest.version,), {})
    assert new_only.manifest(PROBLEM, manifest.version) == manifest
    with pytest.raises(ArtifactError, match="neither"):
        Registry(root, keys=_keys(OLD_KEY)).manifest(PROBLEM, manifest.version)


def test_adopting_signing_on_unsigned_versions(tmp_path):
    unsigned = _register(Registry(tmp_path / "registry", keys=_keys(None)), tmp_path)
    registry = Registry(tmp_path / "registry", keys=_keys())
    refused = registry.resign(PROBLEM)
    assert refused.resigned == () and "not signed" in refused.refused[unsigned.version]
    with pytest.raises(ArtifactError, match="not signed"):
        registry.manifest(PROBLEM, unsigned.version)  # left as it was
    assert registry.resign(PROBLEM, accept_unsigned=True) == reg.Resigned((unsigned.version,), {})
    assert registry.manifest(PROBLEM, unsigned.version) == unsigned


def _bad_versions(root: str, tmp_path: Path) -> dict[str, str]:
    """Versions whose manifests are refused under KEY, by kind: unsigned, signed by a key no
    one knows, forged (signed, then altered), and not JSON at all."""
    bad = {
        "unsigned": _register(Registry(root, keys=_keys(None)), tmp_path, b"u").version,
        "unknown key": _register(Registry(root, keys=_keys(b"x" * 32)), tmp_path, b"x").version,
        "forged": _register(Registry(root, keys=_keys()), tmp_path, b"f").version,
        "not JSON": _register(Registry(root, keys=_keys()), tmp_path, b"j").version,
    }
    registry = Registry(root)
    _forge(registry, bad["forged"])
    registry.fs.pipe_file(_manifest_file(registry, bad["not JSON"]), b'{"problem": "conv')
    return bad


def test_versions_skips_the_unverifiable_and_names_them(root, tmp_path):
    """One bad manifest used to make `versions` raise for the whole problem."""
    registry = Registry(root, keys=_keys())
    good = [_register(registry, tmp_path, w).version for w in (b"1", b"2")]
    bad = _bad_versions(root, tmp_path)
    assert [m.version for m in registry.versions(PROBLEM)] == sorted(good)  # oldest first
    skipped = registry.unverifiable(PROBLEM)
    assert sorted(skipped) == sorted(bad.values())
    assert "not signed" in skipped[bad["unsigned"]]
    assert f"key id {reg.key_id(b'x' * 32)}" in skipped[bad["unknown key"]]
    assert "does not match" in skipped[bad["forged"]]
    assert "not valid JSON" in skipped[bad["not JSON"]]
    assert all(version in why for version, why in skipped.items())


def test_resign_re_signs_what_it_can_and_reports_the_rest(root, tmp_path):
    """Rotation with bad versions among the good: the good are re-signed, the rest refused
    with why and left as they were; accept_unsigned adds the unsigned ones, nothing else."""
    old = _register(Registry(root, keys=_keys(OLD_KEY)), tmp_path, b"old")
    bad = _bad_versions(root, tmp_path)
    rotating = Registry(root, keys=_keys(KEY, OLD_KEY))
    before = {v: rotating.fs.cat_file(_manifest_file(rotating, v)) for v in bad.values()}

    first = rotating.resign(PROBLEM)
    assert first.resigned == (old.version,)
    assert sorted(first.refused) == sorted(bad.values())
    assert "not signed" in first.refused[bad["unsigned"]]
    assert {v: rotating.fs.cat_file(_manifest_file(rotating, v)) for v in bad.values()} == before
    assert Registry(root, keys=_keys(KEY)).manifest(PROBLEM, old.version) == old

    second = rotating.resign(PROBLEM, accept_unsigned=True)
    assert second.resigned == (bad["unsigned"],)  # the old one is done: verified, left alone
    assert sorted(second.refused) == sorted(v for k, v in bad.items() if k != "unsigned")


def test_keys_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIFF_MANIFEST_KEY", "new-key-" + "n" * 24)
    monkeypatch.setenv("SKIFF_MANIFEST_KEYS_PREVIOUS", " old-1 , old-2 ")
    keys = reg.ManifestKeys.from_env()
    assert keys.current == b"new-key-" + b"n" * 24
    assert keys.previous == (b"old-1", b"old-2")
    manifest = _register(Registry(tmp_path / "registry"), tmp_path)
    stored = json.loads(
        Path(_manifest_file(Registry(tmp_path / "registry"), manifest.version)).read_text()
    )
    assert stored["signature"]["key_id"] == reg.key_id(keys.current)
    monkeypatch.delenv("SKIFF_MANIFEST_KEY")
    with pytest.raises(ValueError, match="SKIFF_MANIFEST_KEYS_PREVIOUS is set but"):
        reg.ManifestKeys.from_env()


# --- scikit-learn artifacts that cannot run code ---------------------------------------------

RAN: list[str] = []


class Sneaky:
    """A custom class whose restoring would run code."""

    def __setstate__(self, state):
        RAN.append("setstate")
        self.__dict__.update(state)


def _batch(n: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.poisson(2.0, size=(n, len(FEATURES))).astype(float), columns=FEATURES)
    frame["net_cart"] -= 2  # negative values too (a remove of an earlier visit's item)
    empty = np.zeros(n, dtype=np.int64)
    return Batch(features=frame, events=pd.DataFrame(), starts=empty, ends=empty)


def _labels(batch: Batch) -> np.ndarray:
    return (batch.features["n_add"] + batch.features["net_cart"] > 1).to_numpy(dtype=int)


@pytest.mark.parametrize("algorithm", ["hgb", "logistic"])
def test_a_trained_sklearn_model_round_trips_through_skops(root, tmp_path, algorithm):
    registry = Registry(root, keys=_keys())
    train, test = _batch(400, seed=2), _batch(100, seed=3)
    params = {"max_iter": 20} if algorithm == "hgb" else {}
    model = models.make_model(algorithm, **params).fit(train, _labels(train))
    manifest = models.register_model(registry, model, metrics={}, training_window={})
    assert set(manifest.files) == {"model.json", "estimator.skops"}
    loaded = models.load_registered(registry, manifest.version)
    assert np.array_equal(loaded.predict_proba(test), model.predict_proba(test))


def _logistic_folder(tmp_path: Path, estimator) -> Path:
    import skops.io as sio

    folder = tmp_path / "artifact"
    batch = _batch(50, seed=4)
    models.make_model("logistic").fit(batch, _labels(batch)).save(folder)
    sio.dump(estimator, folder / "estimator.skops")
    return folder


def test_a_skops_file_with_eval_inside_is_refused_naming_it(tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    folder = _logistic_folder(tmp_path, make_pipeline(FunctionTransformer(eval)))
    with pytest.raises(ArtifactError, match=r"outside the allow-list: builtins\.eval"):
        models.load_model(folder)


def test_a_skops_file_with_a_custom_class_is_refused_before_it_is_built(tmp_path):
    sneaky = Sneaky()
    sneaky.payload = 1
    folder = _logistic_folder(tmp_path, sneaky)
    with pytest.raises(ArtifactError, match=r"tests\.test_registry_production\.Sneaky"):
        models.load_model(folder)
    assert RAN == []


def test_a_pickle_renamed_to_skops_is_refused(tmp_path):
    folder = _logistic_folder(tmp_path, [1, 2])
    (folder / "estimator.skops").write_bytes(pickle.dumps(Sneaky()))
    with pytest.raises(ArtifactError, match="not a skops file"):
        models.load_model(folder)
    assert RAN == []


def test_an_allowed_file_of_the_wrong_estimator_is_refused(tmp_path):
    from sklearn.preprocessing import StandardScaler

    folder = _logistic_folder(tmp_path, StandardScaler())
    with pytest.raises(ArtifactError, match="holds a StandardScaler, not the Pipeline"):
        models.load_model(folder)


def test_the_allow_list_covers_exactly_what_the_models_need(tmp_path):
    """Every type the trained models hold beyond skops' defaults is in the allow-list, and the
    allow-list holds nothing they do not need."""
    import skops.io as sio

    batch = _batch(200, seed=5)
    needed = set()
    for algorithm, params in (("hgb", {"max_iter": 5}), ("logistic", {})):
        model = models.make_model(algorithm, **params).fit(batch, _labels(batch))
        model.save(tmp_path / algorithm)
        needed |= set(sio.get_untrusted_types(file=tmp_path / algorithm / "estimator.skops"))
    assert needed == set(models.ALLOW_LIST)
