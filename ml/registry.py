"""Model registry: versioned artifacts with a signed manifest, verified on every load.

A model saves itself into a folder (any files: weights, vocabulary, config). The registry
copies that folder to an immutable version, with a manifest that records what the model is
(algorithm, parameters, metrics, training window, code version) and the sha256 of every file.
`fetch` refuses a version whose files are missing, truncated or altered, naming the file.

Signed manifests. A sha256 beside the files it protects stops accidents, not a writer of the
bucket, who can replace both. So with a key configured every manifest written (a version's and
a published pointer) carries `signature = {key_id, hmac}`: HMAC-SHA256 with the key over the
canonical serialization of everything else in the manifest (JSON, sorted keys, no spaces,
UTF-8). Reading a manifest (`manifest`, `versions`, `fetch`, `fetched`, `publish`,
`load_published`, `published_copy`, `published_manifest`) checks it with
`hmac.compare_digest` and refuses, naming the version and why, one that is unsigned, signed
by a key it does not know, or whose signature does not match.
Keys come from the environment (`ManifestKeys.from_env`): `SKIFF_MANIFEST_KEY` signs and
verifies; `SKIFF_MANIFEST_KEYS_PREVIOUS` (comma-separated) verifies only. A key's id is a hash
of it, so nothing but the environment names keys. Without any key (the local default)
manifests are written unsigned and accepted unverified. What signing does not cover: the role
pointers (`roles.json`) and history are plain files, so a bucket writer can point a role at
another *signed* version, never at files of their own.

Key rotation: (1) set the new key as `SKIFF_MANIFEST_KEY` and move the old one to
`SKIFF_MANIFEST_KEYS_PREVIOUS`: versions signed by either load; new ones are signed by the new
key, and `publish` re-signs the published pointers with it. (2) Re-sign what must outlive the
old key (`Registry.resign(problem)`) or retrain, and republish. (3) Drop the old key from
PREVIOUS: what it alone signed is refused from then on. Adopting signing on an existing
registry of unsigned versions is `resign(problem, accept_unsigned=True)` once (trust on first
use: their files are checked against their manifests, nothing more). One bad version does not
stop the others: `versions` skips a version whose manifest is refused (`unverifiable` names
them and why), and `resign` re-signs the rest and reports the ones it refused.

Roles (`champion`, `challenger`) are pointers per problem (`conversion`, `recommender`). Every
change is a line of the history: `assign` moves one pointer and records it; `set_roles` moves
several in one write (a promotion moves the champion and clears the challenger together) and
leaves the lines to the caller's `record` (or takes them as `lines`), which also records what
moves no pointer (a ramp step, a retired champion, a rolled-back challenger). A line says when,
what, who or what decided (`decided_by`), the stage and traffic share, the reason, and the
evidence (numbers). The policy that decides lives in `ml.release`; its rollout state is stored
here beside the roles.

Concurrent writers. Roles, history and rollout are read-modify-write files, so every write to
them holds the problem's lock, `<problem>/roles.lock`: an object taken by exclusive create
(`os.link` of a complete file locally, `pipe_file(mode="create")` — a conditional PUT — on
object stores) that holds its owner id (unique to that acquisition) and an expiry (a lease,
60 s by default). A writer that finds it taken retries with jittered backoff up to a timeout,
then raises `RegistryLockError` naming the lock object and its owner. The lock is only ever
deleted by "delete it if it is still owner X's": the holder's release (X = itself) and the
breaking of an expired lock (X = the expired owner; a record is never rewritten, so still X's
means still expired). That check-and-delete never removes a lock another writer took after the
check: on S3 the delete is conditional (`DeleteObject` with `If-Match` on the ETag read with the
owner); on a local disk every check-and-delete holds an `flock` on `<lock>.guard` (released by
the OS if its holder dies), so no other delete runs between the check and the delete, and a
lock present at the check cannot be replaced before it; on other stores (`memory://`) a lock
of this process does the same, which covers writers of this process only. So an expired lock
is broken by one writer, and a holder released after its lock was broken and re-taken leaves
the new holder's lock alone. A holder checks its lease before every write and refuses to
write in its last `_LEASE_MARGIN` seconds, so a paused writer whose lock was broken cannot
overwrite the new holder's changes (clock skew between machines must stay well below the
margin; the lease must be more than twice the margin). `locked(problem)` takes
the lock for a whole read-decide-write sequence (re-entrant in a thread: the methods inside
take it again for free). The order inside a pointer move is the history line first, then the
pointer: a reader who sees a pointer has its line; a crash between the two leaves a line for a
move `roles()` does not show, never an unrecorded move.

`publish` copies a role's version for the server: the files first, then a pointer file written
to a temporary name and renamed, so a reader sees the old model or the new one, never half of
one. It writes the pointers holding the lock, for the roles read under it, so two publishers
cannot leave an older role pointer last.

Storage is any fsspec URL: a local path (default), `file://`, `memory://`, `s3://...`. On a
local filesystem the pointer rename is atomic; on object stores a PUT is atomic, so files are
written in one PUT (same ordering guarantee: files before pointer).

Temporary copies. A remote version is copied to a local folder to be verified and loaded:
`fetched(problem, version)` and `published_copy(target, problem, role)` are context managers
that remove that copy on exit (a local registry is checked in place, nothing copied). `fetch`
and `load_published` without a destination leave the copy to the caller.

Layout under the root::

    <problem>/versions/<version>/<files...>, manifest.json
    <problem>/roles.json                 {"champion": version, "challenger": version}
    <problem>/roles_history.jsonl        one line per change, with the reason and evidence
    <problem>/rollout.json               the rollout state (`ml.release.RolloutState`)
    <problem>/roles.lock                 while a writer holds the lock
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import math
import numbers
import os
import posixpath
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import fsspec.asyn

log = logging.getLogger("skiff.registry")

MANIFEST = "manifest.json"
ROLES = ("champion", "challenger")
# What a history line may say of a version: a role it now holds, or how it left one.
HISTORY_ROLES = (*ROLES, "retired", "rolled_back")
LOCK = "roles.lock"
KEY_ENV = "SKIFF_MANIFEST_KEY"
PREVIOUS_KEYS_ENV = "SKIFF_MANIFEST_KEYS_PREVIOUS"
LOCK_LEASE = 60.0  # seconds a lock is held before another writer may break it
LOCK_TIMEOUT = 60.0  # seconds a writer waits for the lock before giving up
_LEASE_MARGIN = 5.0  # a holder stops writing this long before its lease ends
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact that is missing, truncated or altered, or a version that does not exist,
    or a manifest whose signature is missing, unknown or wrong."""


class RegistryLockError(ArtifactError):
    """The problem's lock could not be taken in time, or its lease ran out while held."""


@dataclass(frozen=True)
class Resigned:
    """What `Registry.resign` did: the versions it re-signed, and those it refused, with why."""

    resigned: tuple[str, ...]
    refused: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    problem: str
    version: str
    algorithm: str
    params: dict[str, Any]
    metrics: dict[str, float]
    training_window: dict[str, str]
    code_version: str
    created_at: str
    files: dict[str, str]  # relative path -> sha256
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """One hash for the whole artifact: of its files' names and hashes."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(f"{name}\0{self.files[name]}\n".encode())
        return digest.hexdigest()

    def to_json(self) -> str:
        """The unsigned manifest (the registry adds the signature when it writes one)."""
        return json.dumps(self.body(), indent=2, sort_keys=True)

    def body(self) -> dict[str, Any]:
        """What the signature covers: every field and the artifact's sha256."""
        return {**asdict(self), "sha256": self.sha256}

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse without verifying: the registry's readers verify (`ManifestKeys.verify`)."""
        data = json.loads(text)
        data.pop("sha256", None)
        data.pop("signature", None)
        return cls(**data)


def canonical(body: Mapping[str, Any]) -> bytes:
    """The bytes a manifest's HMAC is computed over: JSON of everything but the signature,
    keys sorted, no whitespace, UTF-8."""
    data = {k: v for k, v in body.items() if k != "signature"}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(key: bytes) -> str:
    """A key's public name: a hash of it (it names the key in manifests and errors)."""
    return hashlib.sha256(b"skiff-manifest-key\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class ManifestKeys:
    """The HMAC-SHA256 keys of manifests: `current` signs (and verifies), `previous` only
    verify (key rotation). No key at all: manifests are unsigned and accepted unverified."""

    current: bytes | None = None
    previous: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.previous and self.current is None:
            raise ValueError(
                f"{PREVIOUS_KEYS_ENV} is set but {KEY_ENV} is not: previous keys only verify;"
                f" set {KEY_ENV} to the key that signs"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ManifestKeys:
        env = os.environ if environ is None else environ
        current = env.get(KEY_ENV, "").strip()
        previous = [k.strip() for k in env.get(PREVIOUS_KEYS_ENV, "").split(",") if k.strip()]
        return cls(current.encode() if current else None, tuple(k.encode() for k in previous))

    @property
    def configured(self) -> bool:
        return self.current is not None

    def _accepted(self) -> dict[str, bytes]:
        keys = [k for k in (self.current, *self.previous) if k is not None]
        return {key_id(k): k for k in keys}

    def sign(self, body: Mapping[str, Any]) -> dict[str, str] | None:
        """The signature of a manifest body with the current key (None without a key)."""
        if self.current is None:
            return None
        mac = hmac.new(self.current, canonical(body), hashlib.sha256).hexdigest()
        return {"key_id": key_id(self.current), "hmac": mac}

    def verify(self, body: Mapping[str, Any], what: str) -> None:
        """Refuse (ArtifactError naming `what` and why) a body whose signature is missing while
        a key is configured, made with a key not configured, or not matching."""
        if not self.configured:
            return
        signature = body.get("signature")
        if not signature:
            raise ArtifactError(
                f"{what}: the manifest is not signed and {KEY_ENV} is set: refusing to load it"
                " (sign existing versions once with Registry.resign(problem,"
                " accept_unsigned=True) if you trust them)"
            )
        if not isinstance(signature, Mapping) or not {"key_id", "hmac"} <= signature.keys():
            raise ArtifactError(f"{what}: the manifest's signature is malformed: refusing it")
        key = self._accepted().get(str(signature["key_id"]))
        if key is None:
            raise ArtifactError(
                f"{what}: the manifest is signed with key id {signature['key_id']}, which is"
                f" neither {KEY_ENV} nor in {PREVIOUS_KEYS_ENV}: refusing to load it"
            )
        expected = hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(signature["hmac"])):
            raise ArtifactError(
                f"{what}: the manifest's signature does not match its content (key id"
                f" {signature['key_id']}): altered after signing; refusing to load it"
            )


def _signed_text(manifest: Manifest, keys: ManifestKeys) -> str:
    body = manifest.body()
    signature = keys.sign(body)
    if signature is not None:
        body["signature"] = signature
    return json.dumps(body, indent=2, sort_keys=True)


def _parse_manifest(
    text: str, keys: ManifestKeys, what: str, *, problem: str, version: str | None = None
) -> Manifest:
    """A verified manifest: signature (per `keys`), its sha256, and that it is the `problem`
    (and `version`) its path says — a signed manifest moved to another place is refused."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{what}: the manifest is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ArtifactError(f"{what}: the manifest is {type(body).__name__}, not an object")
    keys.verify(body, what)
    try:
        manifest = Manifest.from_json(text)
    except TypeError as exc:  # missing or unknown fields
        raise ArtifactError(f"{what}: not a manifest ({exc})") from None
    if body.get("sha256") not in (None, manifest.sha256):
        raise ArtifactError(f"{what}: the manifest's sha256 does not match its file list")
    if manifest.problem != problem or (version is not None and manifest.version != version):
        raise ArtifactError(
            f"{what}: the manifest describes {manifest.problem} {manifest.version}, not what"
            " its path says: refusing it"
        )
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """A hash of the `ml` package source: the code that trained and will load the model."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# Locks this thread holds: lock path -> [owner, expires_at (epoch s), depth].
_held = threading.local()
# The check-and-delete guards of stores without one of their own (memory://): lock path -> lock.
_guards: dict[str, threading.Lock] = {}


def _lock_record(data: bytes) -> dict[str, Any]:
    """A lock's record; an unreadable one as an expired lock of owner "?"."""
    try:
        record = json.loads(data)
        if isinstance(record, dict):
            return record
    except ValueError:
        pass
    return {"owner": "?", "expires_at": 0.0, "unreadable": data[:80].decode(errors="replace")}


@contextmanager
def _delete_guard(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[None]:
    """Mutual exclusion of the lock's check-and-delete: an exclusive `flock` on `<lock>.guard`
    on a local disk (across processes; the OS drops it when its holder dies), a lock of this
    process elsewhere."""
    if not is_local(fs):
        with _guards.setdefault(path, threading.Lock()):
            yield
        return
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with open(f"{path}.guard", "a") as guard:  # never deleted: a lock file of its own
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases it


async def _s3_delete_if_owner(fs: Any, bucket: str, key: str, owner: str) -> bool:
    """Delete s3://bucket/key if its record names `owner`: conditional on the ETag read with
    the record, so S3 refuses (412) if the object was replaced since. True if deleted."""
    from botocore.exceptions import ClientError

    await fs.set_session()
    s3 = await fs.get_s3(bucket)
    try:
        got = await s3.get_object(Bucket=bucket, Key=key)
        data = await got["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return False
        raise
    if str(_lock_record(data).get("owner")) != owner:
        return False
    try:
        await s3.delete_object(Bucket=bucket, Key=key, IfMatch=got["ETag"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "NoSuchKey"}:
            return False  # replaced by another writer's lock, or gone
        raise
    return True


class Registry:
    def __init__(
        self,
        root: str | Path,
        *,
        keys: ManifestKeys | None = None,
        lock_lease: float = LOCK_LEASE,
        lock_timeout: float = LOCK_TIMEOUT,
    ):
        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.keys = ManifestKeys.from_env() if keys is None else keys
        if not lock_lease > 2 * _LEASE_MARGIN:
            raise ValueError(
                f"lock_lease must be more than {2 * _LEASE_MARGIN:g} s, got {lock_lease:g}: a"
                f" holder stops writing {_LEASE_MARGIN:g} s before its lease ends, and needs"
                " at least as long again to write"
            )
        self.lock_lease = lock_lease
        self.lock_timeout = lock_timeout

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _write_text(self, path: str, text: str) -> None:
        """Write then rename locally, one PUT elsewhere: a reader never sees a partial file."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not is_local(self.fs):
            self.fs.pipe_file(path, text.encode())
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "w") as handle:
            handle.write(text)
        self.fs.mv(tmp, path)

    def _read_text(self, path: str) -> str:
        with self.fs.open(path, "r") as handle:
            return handle.read()

    def _read_optional(self, path: str) -> str | None:
        """The file's text, or None when it does not exist (read fresh, no listing cache:
        another process may have just written it)."""
        self.fs.invalidate_cache(posixpath.dirname(path))
        try:
            return self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return None

    # --- the lock ---------------------------------------------------------------------------

    def _create(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` only if it does not exist; False if it does."""
        if is_local(self.fs):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            Path(tmp).write_bytes(data)
            try:
                os.link(tmp, path)  # atomic, complete, and fails if the lock exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            self.fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False

    def _lock_owner(self, path: str) -> dict[str, Any] | None:
        text = self._read_optional(path)
        return None if text is None else _lock_record(text.encode())

    @contextmanager
    def locked(self, problem: str) -> Iterator[None]:
        """Hold the problem's lock for the block (see the module docstring). Re-entrant within
        a thread; other threads and processes wait for it."""
        _refuse_unguarded(self.fs, self.url)
        path = self._path(problem, LOCK)
        key = self.fs.unstrip_protocol(path)
        held = _held.__dict__.setdefault("locks", {})
        if key in held:
            held[key][2] += 1
            try:
                yield
            finally:
                held[key][2] -= 1
            return
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        expires_at = self._acquire(path, owner)
        held[key] = [owner, expires_at, 1]
        try:
            yield
        finally:
            del held[key]
            self._remove_if_owner(path, owner)  # not if broken and re-taken meanwhile

    def _acquire(self, path: str, owner: str) -> float:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            expires_at = time.time() + self.lock_lease
            record = {
                "owner": owner,
                "expires_at": expires_at,
                "acquired_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            if self._create(path, json.dumps(record).encode()):
                return expires_at
            found = self._lock_owner(path)
            expired = found is not None and float(found.get("expires_at", 0)) < time.time()
            if expired and self._remove_if_owner(path, str(found.get("owner"))):
                continue  # broken: try to take it
            if time.monotonic() > deadline:
                who = (found or {}).get("owner", "unknown (released just now)")
                raise RegistryLockError(
                    f"the registry lock {self.fs.unstrip_protocol(path)} is held by {who}"
                    f" (expires at {(found or {}).get('expires_at')}); gave up after"
                    f" {self.lock_timeout:.0f} s. A crashed writer's lock expires after its"
                    f" lease ({self.lock_lease:.0f} s)."
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _remove_if_owner(self, path: str, owner: str) -> bool:
        """Delete the lock if it is `owner`'s; True if it did. Never deletes a lock another
        writer created after the check (see the module docstring)."""
        if _is_s3(self.fs):
            bucket, key, _ = self.fs.split_path(path)
            fs = self.fs
            deleted = fsspec.asyn.sync(fs.loop, _s3_delete_if_owner, fs, bucket, key, owner)
            fs.invalidate_cache(path)
            return deleted
        with _delete_guard(self.fs, path):
            found = self._lock_owner(path)
            if found is None or str(found.get("owner")) != owner:
                return False
            self._remove(path)
            return True

    def _remove(self, path: str) -> None:
        """Delete, tolerating that it is gone (a release must not hide the block's error)."""
        with suppress(FileNotFoundError):
            self.fs.rm(path)

    def _check_lease(self, problem: str) -> None:
        """Refuse to write without the lock, or past its lease (it may have been broken)."""
        path = self._path(problem, LOCK)
        held = _held.__dict__.get("locks", {}).get(self.fs.unstrip_protocol(path))
        if held is None:
            raise RegistryLockError(f"writing {problem} without holding {path}")
        if time.time() > held[1] - _LEASE_MARGIN:
            raise RegistryLockError(
                f"the lease on {self.fs.unstrip_protocol(path)} ran out before this write"
                f" ({self.lock_lease:.0f} s): another writer may hold it now; nothing written"
            )

    def _write_locked(self, problem: str, name: str, text: str) -> None:
        self._check_lease(problem)
        self._write_text(self._path(problem, name), text)

    # --- versions ---------------------------------------------------------------------------

    def register(
        self,
        problem: str,
        model_dir: Path,
        *,
        algorithm: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        training_window: dict[str, str],
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """Store the files a model saved in `model_dir` as a new immutable version."""
        model_dir = Path(model_dir)
        files = {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in _files_of(model_dir)}
        if not files:
            raise ArtifactError(f"{model_dir} holds no files to register")
        now = dt.datetime.now(dt.UTC)
        manifest = Manifest(
            problem=problem,
            version="",
            algorithm=algorithm,
            params=params,
            metrics={k: float(v) for k, v in metrics.items()},
            training_window=training_window,
            code_version=code_version(),
            created_at=now.isoformat(timespec="seconds"),
            files=files,
            extra=extra or {},
        )
        version = f"{now:%Y%m%dT%H%M%S}-{algorithm}-{manifest.sha256[:8]}"
        manifest = Manifest(**{**asdict(manifest), "version": version})
        target = self._path(problem, "versions", version)
        for name in files:
            destination = posixpath.join(target, name)
            self.fs.makedirs(posixpath.dirname(destination), exist_ok=True)
            self.fs.put_file(str(model_dir / name), destination)
        # last: complete
        self._write_text(posixpath.join(target, MANIFEST), _signed_text(manifest, self.keys))
        return manifest

    def manifest(self, problem: str, version: str) -> Manifest:
        """The version's manifest, its signature verified (ArtifactError if refused)."""
        path = self._path(problem, "versions", version, MANIFEST)
        text = self._read_optional(path)
        if text is None:
            raise ArtifactError(f"{problem} version {version!r} is not in the registry {self.url}")
        what = f"{problem} version {version!r} in {self.url}"
        return _parse_manifest(text, self.keys, what, problem=problem, version=version)

    def _version_names(self, problem: str) -> list[str]:
        base = self._path(problem, "versions")
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        names = sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False))
        return [n for n in names if self.fs.exists(self._path(problem, "versions", n, MANIFEST))]

    def versions(self, problem: str) -> list[Manifest]:
        """Every complete version of a problem whose manifest verifies, oldest first. A version
        whose manifest is refused is skipped, with a warning on the `skiff.registry` log:
        `unverifiable` names those."""
        good, refused = self._checked(problem)
        for version, why in refused.items():
            log.warning("%s version %s skipped, its manifest refused: %s", problem, version, why)
        return good

    def unverifiable(self, problem: str) -> dict[str, str]:
        """The complete versions of a problem whose manifest is refused (not JSON, not a
        manifest, unsigned while a key is set, signed by an unknown key, altered, moved):
        version -> why."""
        return self._checked(problem)[1]

    def _checked(self, problem: str) -> tuple[list[Manifest], dict[str, str]]:
        good, refused = [], {}
        for name in self._version_names(problem):
            try:
                good.append(self.manifest(problem, name))
            except ArtifactError as exc:
                refused[name] = str(exc)
        return good, refused

    def fetch(self, problem: str, version: str, dest: Path | None = None) -> Path:
        """A local folder with the version's files, each verified against the manifest.
        Without `dest`, a remote version is copied to a temporary folder the caller must
        remove: prefer `fetched`."""
        manifest = self.manifest(problem, version)
        return _verified(self.fs, self._path(problem, "versions", version), manifest, dest)

    @contextmanager
    def fetched(self, problem: str, version: str) -> Iterator[Path]:
        """A verified local folder with the version's files for the `with` block.

        A local registry is checked in place (nothing copied, nothing removed); a remote one is
        copied to a temporary folder that is removed on exit, also when the block raises. The
        caller must load the model fully into memory inside the block.
        """
        manifest = self.manifest(problem, version)
        with _verified_copy(self.fs, self._path(problem, "versions", version), manifest) as path:
            yield path

    def resign(self, problem: str, *, accept_unsigned: bool = False) -> Resigned:
        """Re-sign every version of `problem` with the current key, as far as each allows.

        A version is re-signed only if its manifest verifies with a configured key (current or
        previous: the rotation step) — or, with `accept_unsigned`, if it is unsigned (adopting
        signing on an old registry: trust on first use) — and its files match the manifest.
        Any other version is left as it is and reported in `refused` with why; those already
        signed with the current key are verified and left alone. The published copies are
        re-signed by the next `publish`.
        """
        if not self.keys.configured:
            raise ArtifactError(f"{KEY_ENV} is not set: there is no key to sign with")
        done, refused = [], {}
        for name in self._version_names(problem):
            try:
                if self._resign_version(problem, name, accept_unsigned):
                    done.append(name)
            except ArtifactError as exc:
                refused[name] = str(exc)
        return Resigned(tuple(done), refused)

    def _resign_version(self, problem: str, name: str, accept_unsigned: bool) -> bool:
        """Re-sign one version (True), or verify it if the current key signed it (False)."""
        path = self._path(problem, "versions", name, MANIFEST)
        text = self._read_text(path)
        try:
            signature = json.loads(text).get("signature")
        except (ValueError, AttributeError):
            signature = None  # not a manifest: _parse_manifest says why
        if isinstance(signature, Mapping) and signature.get("key_id") == key_id(
            self.keys.current or b""
        ):
            self.manifest(problem, name)  # verifies
            return False
        what = f"{problem} version {name!r} in {self.url}"
        keys = self.keys if signature or not accept_unsigned else ManifestKeys()
        manifest = _parse_manifest(text, keys, what, problem=problem, version=name)
        with _verified_copy(self.fs, posixpath.dirname(path), manifest):
            pass
        self._write_text(path, _signed_text(manifest, self.keys))
        return True

    # --- roles ------------------------------------------------------------------------------

    def roles(self, problem: str) -> dict[str, str]:
        text = self._read_optional(self._path(problem, "roles.json"))
        return json.loads(text) if text is not None else {}

    def role(self, problem: str, role: str) -> Manifest | None:
        version = self.roles(problem).get(role)
        return self.manifest(problem, version) if version else None

    def set_roles(
        self,
        problem: str,
        changes: Mapping[str, str | None],
        *,
        lines: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, str | None]:
        """Point each role of `changes` at its version (None clears it) in one write; returns
        the versions they pointed at before. `lines` are `record` keyword arguments, written
        to the history first under the same lock (so a reader never sees the pointers move
        without them); without them the caller records each change."""
        for role, version in changes.items():
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}, got {role!r}")
            if version is not None:
                self.manifest(problem, version)  # exists and verifies, or ArtifactError
        with self.locked(problem):
            roles = self.roles(problem)
            previous = {role: roles.get(role) for role in changes}
            for line in lines:
                self.record(problem, **line)
            for role, version in changes.items():
                if version is None:
                    roles.pop(role, None)
                else:
                    roles[role] = version
            self._write_locked(problem, "roles.json", json.dumps(roles, indent=2))
        return previous

    def assign(
        self,
        problem: str,
        role: str,
        version: str | None,
        reason: str,
        *,
        decided_by: str = "operator",
        stage: str | None = None,
        traffic: float | None = None,
        evidence: Mapping[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Point `role` at `version` (None clears it) and record the change, under the lock
        (the line first, then the pointer); returns the line."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        with self.locked(problem):
            roles = self.roles(problem)
            if version is not None:
                self.manifest(problem, version)  # before the line: no line for a bad version
            written = self.record(
                problem,
                role,
                version,
                reason,
                previous=roles.get(role),
                decided_by=decided_by,
                stage=stage,
                traffic=traffic,
                evidence=evidence,
                at=at,
            )
            if version is None:
                roles.pop(role, None)
            else:
                roles[role] = version
            self._write_locked(problem, "roles.json", json.dumps(roles, indent=2))
        return written

    def record(
        self,
        problem: str,
        role: str,
        version: str | None,
        reason: str,
        *,
        previous: str | None = None,
        decided_by: str = "operator",
        stage: str | None = None,
        traffic: float | None = None,
        evidence: Mapping[str, Any] | None = None,
        at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Append one line to the history without moving a pointer; returns the line.

        `evidence` holds numbers and text only (NaN is stored as null, so the file stays JSON).
        """
        if role not in HISTORY_ROLES:
            raise ValueError(f"history role must be one of {HISTORY_ROLES}, got {role!r}")
        if not decided_by:
            raise ValueError("decided_by must say who or what decided")
        line = {
            "at": (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds"),
            "problem": problem,
            "version": version,
            "role": role,
            "previous": previous,
            "stage": stage,
            "traffic": None if traffic is None else float(traffic),
            "decided_by": decided_by,
            "reason": reason,
            "evidence": _plain(evidence or {}),
        }
        text = json.dumps(line, allow_nan=False) + "\n"
        with self.locked(problem):
            old = self._read_optional(self._path(problem, "roles_history.jsonl")) or ""
            self._write_locked(problem, "roles_history.jsonl", old + text)
        return line

    def history(self, problem: str) -> list[dict[str, Any]]:
        text = self._read_optional(self._path(problem, "roles_history.jsonl")) or ""
        return [json.loads(line) for line in text.splitlines() if line]

    def rollout(self, problem: str) -> dict[str, Any] | None:
        """The stored rollout state of a problem (see `ml.release.RolloutState`), if any."""
        text = self._read_optional(self._path(problem, "rollout.json"))
        return json.loads(text) if text is not None else None

    def set_rollout(self, problem: str, state: Mapping[str, Any]) -> None:
        with self.locked(problem):
            self._write_locked(problem, "rollout.json", json.dumps(dict(state), indent=2))

    # --- publishing -------------------------------------------------------------------------

    def publish(self, problem: str, target: str | Path, roles: Iterable[str] = ROLES) -> dict:
        """Copy the roles' versions to `target` (another URL) for the server, atomically.

        Writes `<target>/<problem>/<version>/...` (immutable, verified first), then
        `<target>/<problem>/<role>.json` = the manifest signed with the current key, by
        write-then-rename. A role that is not set has its pointer removed, so the server
        unloads a rolled-back or promoted challenger. Files are copied without the lock; the
        pointers are written holding it, for the roles read under it (copying again if they
        moved meanwhile). Returns {role: version} of what was published.
        """
        out = Registry(target, keys=self.keys)
        roles = tuple(roles)
        while True:
            now = self.roles(problem)
            wanted = {r: self.manifest(problem, now[r]) if now.get(r) else None for r in roles}
            for manifest in wanted.values():
                if manifest is not None:
                    self._copy_version(out, manifest)
            with self.locked(problem):
                current = self.roles(problem)
                if any(current.get(r) != (m.version if m else None) for r, m in wanted.items()):
                    continue  # moved while copying: copy what the roles say now
                self._check_lease(problem)
                for role, manifest in wanted.items():
                    pointer = out._path(problem, f"{role}.json")
                    if manifest is None:
                        if out.fs.exists(pointer):
                            out.fs.rm(pointer)
                    else:
                        out._write_text(pointer, _signed_text(manifest, self.keys))
                return {role: m.version for role, m in wanted.items() if m is not None}

    def _copy_version(self, out: Registry, manifest: Manifest) -> None:
        folder = out._path(manifest.problem, manifest.version)
        if out._read_optional(posixpath.join(folder, MANIFEST)) is not None:
            return
        with self.fetched(manifest.problem, manifest.version) as local:
            for name in manifest.files:
                destination = posixpath.join(folder, name)
                out.fs.makedirs(posixpath.dirname(destination), exist_ok=True)
                out.fs.put_file(str(local / name), destination)
        out._write_text(posixpath.join(folder, MANIFEST), _signed_text(manifest, self.keys))


def _plain(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """Evidence as JSON values: numbers (NaN and infinities -> None), text, booleans, None."""
    out: dict[str, Any] = {}
    for key, value in evidence.items():
        if isinstance(value, bool | str) or value is None:
            out[str(key)] = value
        elif isinstance(value, numbers.Integral):
            out[str(key)] = int(value)
        elif isinstance(value, numbers.Real):
            out[str(key)] = float(value) if math.isfinite(value) else None
        else:
            raise ValueError(
                f"evidence {key!r} must be a number or text, got {type(value).__name__}"
            )
    return out


def load_published(
    target: str | Path, problem: str, role: str = "champion", *, keys: ManifestKeys | None = None
) -> tuple[Manifest, Path]:
    """What the server calls: the published manifest of a role (signature verified) and a
    verified local folder. A remote target's files are copied to a temporary folder the
    caller must remove: prefer `published_copy`."""
    store = Registry(target, keys=keys)
    manifest = _published_manifest(store, problem, role)
    return manifest, _verified(store.fs, store._path(problem, manifest.version), manifest, None)


@contextmanager
def published_copy(
    target: str | Path, problem: str, role: str = "champion", *, keys: ManifestKeys | None = None
) -> Iterator[tuple[Manifest, Path]]:
    """`load_published` for the `with` block: the temporary copy of a remote artifact is
    removed on exit (a local target is checked in place and left alone)."""
    store = Registry(target, keys=keys)
    manifest = _published_manifest(store, problem, role)
    with _verified_copy(store.fs, store._path(problem, manifest.version), manifest) as path:
        yield manifest, path


def published_manifest(
    target: str | Path, problem: str, role: str = "champion", *, keys: ManifestKeys | None = None
) -> Manifest:
    """The published manifest of a role, its signature verified, without reading or copying
    the model's files: for who needs to know what serves (monitoring), not to load it. Whoever
    loads the files checks them (`published_copy`)."""
    return _published_manifest(Registry(target, keys=keys), problem, role)


def _published_manifest(store: Registry, problem: str, role: str) -> Manifest:
    pointer = store._path(problem, f"{role}.json")
    text = store._read_optional(pointer)
    if text is None:
        raise ArtifactError(f"nothing is published as {problem} {role} in {store.url}")
    return _parse_manifest(
        text, store.keys, f"published {problem} {role} in {store.url}", problem=problem
    )


@contextmanager
def _verified_copy(
    fs: fsspec.AbstractFileSystem, folder: str, manifest: Manifest
) -> Iterator[Path]:
    """`_verified` into a temporary folder removed on exit; local folders are checked in place."""
    if is_local(fs):
        yield _verified(fs, folder, manifest, None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="skiff-"))
    try:
        yield _verified(fs, folder, manifest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is the local disk (paths are ordinary file paths there)."""
    return bool({"file", "local"} & set(_protocols(fs)))


# Stores whose lock is safe across writers: the local disk (os.link, flock), S3 (If-None-Match
# create, If-Match delete) and memory:// (one process: tests). Elsewhere (gs://, az://, ...)
# the exclusive create and the conditional delete would be assumed, not had.
LOCKABLE_PROTOCOLS = {"file", "local", "s3", "s3a", "memory"}


def _refuse_unguarded(fs: fsspec.AbstractFileSystem, url: str) -> None:
    if not LOCKABLE_PROTOCOLS & set(_protocols(fs)):
        raise RegistryLockError(
            f"the registry at {url} cannot be locked safely: role changes need an exclusive"
            f" create and a conditional delete, which Skiff has for a local disk and S3 (or an"
            f" S3-compatible store) only, not for {'/'.join(_protocols(fs))}://"
        )


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is S3 (s3fs): conditional requests go to its client."""
    return "s3" in _protocols(fs)


def _verified(
    fs: fsspec.AbstractFileSystem, folder: str, manifest: Manifest, dest: Path | None
) -> Path:
    """Check every file of `folder` against the manifest; remote files are copied to `dest`
    (a new temporary folder by default) first, local ones are checked in place."""
    in_place = dest is None and is_local(fs)
    made = dest is None and not in_place
    local_root = Path(folder) if in_place else Path(dest or tempfile.mkdtemp(prefix="skiff-"))
    try:
        for name, expected in manifest.files.items():
            remote = posixpath.join(folder, name)
            if not fs.exists(remote):
                raise ArtifactError(
                    f"{manifest.problem} {manifest.version}: file {name} is missing"
                )
            local = local_root / name
            if not in_place:
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            actual = sha256_file(local)
            if actual != expected:
                raise ArtifactError(
                    f"{manifest.problem} {manifest.version}: file {name} does not match its"
                    f" manifest (sha256 {actual[:12]}… instead of {expected[:12]}…): truncated"
                    " or altered; refusing to load it"
                )
    except BaseException:
        if made:  # a refused copy is not left behind
            shutil.rmtree(local_root, ignore_errors=True)
        raise
    return local_root
