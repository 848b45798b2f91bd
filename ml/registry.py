"""Model registry: versioned artifacts with a manifest, verified on every load.

A model saves itself into a folder (any files: weights, vocabulary, config). The registry
copies that folder to an immutable version, with a manifest that records what the model is
(algorithm, parameters, metrics, training window, code version) and the sha256 of every file.
`fetch` refuses a version whose files are missing, truncated or altered, naming the file.

Roles (`champion`, `challenger`) are pointers per problem (`conversion`, `recommender`). Every
change is a line of the history: `assign` moves one pointer and records it; `set_roles` moves
several in one write (a promotion moves the champion and clears the challenger together) and
leaves the lines to the caller's `record`, which also records what moves no pointer (a ramp
step, a retired champion, a rolled-back challenger). A line says when, what, who or what decided
(`decided_by`), the stage and traffic share, the reason, and the evidence (numbers). The policy
that decides lives in `ml.release`; its rollout state is stored here beside the roles.
`publish` copies a role's version for the server: the files first, then a pointer file written
to a temporary name and renamed, so a reader sees the old model or the new one, never half of
one.

Storage is any fsspec URL: a local path (default), `file://`, `memory://`, `s3://...`. On a
local filesystem the pointer rename is atomic; object stores give the same ordering guarantee
(files before pointer) but their rename is a copy.

Layout under the root::

    <problem>/versions/<version>/<files...>, manifest.json
    <problem>/roles.json                 {"champion": version, "challenger": version}
    <problem>/roles_history.jsonl        one line per change, with the reason and evidence
    <problem>/rollout.json               the rollout state (`ml.release.RolloutState`)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import numbers
import posixpath
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

MANIFEST = "manifest.json"
ROLES = ("champion", "challenger")
# What a history line may say of a version: a role it now holds, or how it left one.
HISTORY_ROLES = (*ROLES, "retired", "rolled_back")
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact that is missing, truncated or altered, or a version that does not exist."""


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
        return json.dumps({**asdict(self), "sha256": self.sha256}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data.pop("sha256", None)
        return cls(**data)


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


class Registry:
    def __init__(self, root: str | Path):
        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _write_text(self, path: str, text: str) -> None:
        """Write then rename, so a reader never sees a partial file."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "w") as handle:
            handle.write(text)
        self.fs.mv(tmp, path)

    def _read_text(self, path: str) -> str:
        with self.fs.open(path, "r") as handle:
            return handle.read()

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
        self._write_text(posixpath.join(target, MANIFEST), manifest.to_json())  # last: complete
        return manifest

    def manifest(self, problem: str, version: str) -> Manifest:
        path = self._path(problem, "versions", version, MANIFEST)
        if not self.fs.exists(path):
            raise ArtifactError(f"{problem} version {version!r} is not in the registry {self.url}")
        return Manifest.from_json(self._read_text(path))

    def versions(self, problem: str) -> list[Manifest]:
        """Every complete version of a problem, oldest first."""
        base = self._path(problem, "versions")
        if not self.fs.exists(base):
            return []
        names = sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False))
        return [
            self.manifest(problem, name)
            for name in names
            if self.fs.exists(self._path(problem, "versions", name, MANIFEST))
        ]

    def fetch(self, problem: str, version: str, dest: Path | None = None) -> Path:
        """A local folder with the version's files, each verified against the manifest."""
        manifest = self.manifest(problem, version)
        return _verified(self.fs, self._path(problem, "versions", version), manifest, dest)

    # --- roles ------------------------------------------------------------------------------

    def roles(self, problem: str) -> dict[str, str]:
        path = self._path(problem, "roles.json")
        return json.loads(self._read_text(path)) if self.fs.exists(path) else {}

    def role(self, problem: str, role: str) -> Manifest | None:
        version = self.roles(problem).get(role)
        return self.manifest(problem, version) if version else None

    def set_roles(self, problem: str, changes: Mapping[str, str | None]) -> dict[str, str | None]:
        """Point each role of `changes` at its version (None clears it) in one write; returns
        the versions they pointed at before. Records nothing: the caller records each change."""
        for role, version in changes.items():
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}, got {role!r}")
            if version is not None:
                self.manifest(problem, version)  # exists, or ArtifactError
        roles = self.roles(problem)
        previous = {role: roles.get(role) for role in changes}
        for role, version in changes.items():
            if version is None:
                roles.pop(role, None)
            else:
                roles[role] = version
        self._write_text(self._path(problem, "roles.json"), json.dumps(roles, indent=2))
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
        """Point `role` at `version` (None clears it) and record the change; returns the line."""
        previous = self.set_roles(problem, {role: version})[role]
        return self.record(
            problem,
            role,
            version,
            reason,
            previous=previous,
            decided_by=decided_by,
            stage=stage,
            traffic=traffic,
            evidence=evidence,
            at=at,
        )

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
        history = self._path(problem, "roles_history.jsonl")
        old = self._read_text(history) if self.fs.exists(history) else ""
        self._write_text(history, old + json.dumps(line, allow_nan=False) + "\n")
        return line

    def history(self, problem: str) -> list[dict[str, Any]]:
        path = self._path(problem, "roles_history.jsonl")
        if not self.fs.exists(path):
            return []
        return [json.loads(line) for line in self._read_text(path).splitlines() if line]

    def rollout(self, problem: str) -> dict[str, Any] | None:
        """The stored rollout state of a problem (see `ml.release.RolloutState`), if any."""
        path = self._path(problem, "rollout.json")
        return json.loads(self._read_text(path)) if self.fs.exists(path) else None

    def set_rollout(self, problem: str, state: Mapping[str, Any]) -> None:
        self._write_text(self._path(problem, "rollout.json"), json.dumps(dict(state), indent=2))

    # --- publishing -------------------------------------------------------------------------

    def publish(self, problem: str, target: str | Path, roles: Iterable[str] = ROLES) -> dict:
        """Copy the roles' versions to `target` (another URL) for the server, atomically.

        Writes `<target>/<problem>/<version>/...` (immutable, verified first), then
        `<target>/<problem>/<role>.json` = the manifest, by write-then-rename. A role that is
        not set has its pointer removed, so the server unloads a rolled-back or promoted
        challenger. Returns {role: version} of what was published.
        """
        out = Registry(target)
        published = {}
        for role in roles:
            manifest = self.role(problem, role)
            if manifest is None:
                pointer = out._path(problem, f"{role}.json")
                if out.fs.exists(pointer):
                    out.fs.rm(pointer)
                continue
            folder = out._path(problem, manifest.version)
            if not out.fs.exists(posixpath.join(folder, MANIFEST)):
                with tempfile.TemporaryDirectory(prefix="skiff-publish-") as tmp:
                    local = self.fetch(problem, manifest.version, Path(tmp))
                    for name in manifest.files:
                        destination = posixpath.join(folder, name)
                        out.fs.makedirs(posixpath.dirname(destination), exist_ok=True)
                        out.fs.put_file(str(local / name), destination)
                out._write_text(posixpath.join(folder, MANIFEST), manifest.to_json())
            out._write_text(out._path(problem, f"{role}.json"), manifest.to_json())
            published[role] = manifest.version
        return published


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
    target: str | Path, problem: str, role: str = "champion"
) -> tuple[Manifest, Path]:
    """What the server calls: the published manifest of a role and a verified local folder."""
    store = Registry(target)
    pointer = store._path(problem, f"{role}.json")
    if not store.fs.exists(pointer):
        raise ArtifactError(f"nothing is published as {problem} {role} in {store.url}")
    manifest = Manifest.from_json(store._read_text(pointer))
    return manifest, _verified(store.fs, store._path(problem, manifest.version), manifest, None)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def _verified(
    fs: fsspec.AbstractFileSystem, folder: str, manifest: Manifest, dest: Path | None
) -> Path:
    """Check every file of `folder` against the manifest; remote files are copied to `dest`
    (a new temporary folder by default) first, local ones are checked in place."""
    in_place = dest is None and _is_local(fs)
    local_root = Path(folder) if in_place else Path(dest or tempfile.mkdtemp(prefix="skiff-"))
    for name, expected in manifest.files.items():
        remote = posixpath.join(folder, name)
        if not fs.exists(remote):
            raise ArtifactError(f"{manifest.problem} {manifest.version}: file {name} is missing")
        local = local_root / name
        if not in_place:
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
        actual = sha256_file(local)
        if actual != expected:
            raise ArtifactError(
                f"{manifest.problem} {manifest.version}: file {name} does not match its manifest"
                f" (sha256 {actual[:12]}… instead of {expected[:12]}…): truncated or altered;"
                " refusing to load it"
            )
    return local_root
