"""Content-addressed cache of pipeline stage outputs under MEGU_HOME.

A stage's cache key is the sha256 of one canonical JSON document made of the stage name, its
code version, its configuration and the digests of its input files, so the key changes
whenever one of them changes. The key is computed here rather than by Prefect: a value with
no canonical JSON form raises instead of silently dropping out of the key.

Each entry is the folder `$MEGU_HOME/stages/<stage>/<key>/`, holding the stage's files and a
`manifest.json` that lists them with their sha256 digests. `commit` writes the manifest last,
so a stage that crashes earlier leaves no trusted entry, and `lookup` trusts an entry only
while every listed file exists and still has its recorded digest.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np

from megu_core.artifacts import PathLike, atomic_write_json, file_digest
from megu_core.errors import ArtifactError, ConfigError

logger = logging.getLogger(__name__)

MEGU_HOME_ENV = "MEGU_HOME"
DEFAULT_MEGU_HOME = ".megu"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1

_STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # also a folder name, so no dots or slashes
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def megu_home() -> Path:
    """Return the absolute MEGU_HOME folder ($MEGU_HOME, default ./.megu), creating it."""
    home = Path(os.environ.get(MEGU_HOME_ENV) or DEFAULT_MEGU_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


# ---------------------------------------------------------------------------------------------
# Cache keys


def stage_key(
    stage: str,
    code_version: str,
    config: Mapping[str, Any],
    input_digests: Mapping[str, str],
) -> str:
    """Return the sha256 hex cache key of a stage run.

    `config` may nest mappings with string keys, lists, tuples, dataclasses, enums, paths,
    None, booleans, integers, finite floats and strings. Tuples and lists are equivalent.
    `input_digests` maps each input's name to the sha256 hex digest of its content.
    Any other value raises ConfigError naming its position in the configuration.
    """
    _check_stage_name(stage)
    if not isinstance(code_version, str) or not code_version:
        raise ValueError(f"code_version must be a non-empty string, got {code_version!r}")
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping, got {type(config).__name__}")

    document = {
        "stage": stage,
        "code_version": code_version,
        "config": _canonical(config, "config"),
        "inputs": _checked_digests(input_digests),
    }
    # Floats are written with Python's shortest round-trip repr, the same on every platform.
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _canonical(value: Any, where: str) -> Any:
    """Return `value` as plain JSON data, or raise ConfigError naming `where`."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):  # includes numpy.float64
        return _finite_float(value, where)
    if isinstance(value, np.generic) and isinstance(value.item(), bool | int | float):
        return _canonical(value.item(), where)
    if isinstance(value, enum.Enum):
        return _canonical(value.value, where)
    if isinstance(value, PurePath):
        return value.as_posix()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return _canonical(fields, where)
    if isinstance(value, Mapping):
        return _canonical_mapping(value, where)
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{where}[{index}]") for index, item in enumerate(value)]

    raise ConfigError(
        f"{where} is a {type(value).__name__}, which has no canonical JSON form for a cache "
        "key; use None, bool, int, float, str, a list, a mapping with string keys, a "
        "dataclass, an enum or a path, or hash the object's content and pass the digest in "
        "input_digests"
    )


def _finite_float(value: float, where: str) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(
            f"{where} is {value!r}; cache keys accept only finite floats, so use None for "
            "'no limit' or 'undefined'"
        )
    return float(value)


def _canonical_mapping(value: Mapping[Any, Any], where: str) -> dict[str, Any]:
    # Non-string keys would become strings in JSON, so {1: x} and {"1": x} would share a key.
    non_text = [key for key in value if not isinstance(key, str)]
    if non_text:
        raise ConfigError(
            f"{where} has non-string keys {non_text!r}; use string keys in configurations"
        )
    return {key: _canonical(item, f"{where}.{key}") for key, item in value.items()}


def _checked_digests(input_digests: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(input_digests, Mapping):
        raise ValueError(f"input_digests must be a mapping, got {type(input_digests).__name__}")

    for name, digest in input_digests.items():
        if not isinstance(name, str) or not isinstance(digest, str):
            raise ValueError(f"input_digests must map strings to strings, got {name!r}: {digest!r}")
        if not _SHA256_HEX.fullmatch(digest):
            raise ValueError(
                f"input_digests[{name!r}] = {digest!r} is not a sha256 hex digest; pass "
                "file_digest(path) of the input file, not its path"
            )
    return dict(input_digests)


def _check_stage_name(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_NAME.fullmatch(stage):
        raise ValueError(
            f"invalid stage name {stage!r}; use lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )


# ---------------------------------------------------------------------------------------------
# Manifests


@dataclass(frozen=True)
class ManifestEntry:
    """One committed file of a stage: its path inside the stage folder and its digest."""

    path: str  # relative to the stage folder, with '/' separators
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The committed outputs of one stage run, read from or written to `manifest.json`."""

    stage: str
    key: str
    files: dict[str, ManifestEntry]
    created: str  # ISO 8601 time in UTC
    extra: dict[str, Any]  # caller's metadata, stored as JSON
    directory: Path  # absolute stage folder, not stored so that MEGU_HOME can move

    def path(self, name: str) -> Path:
        """Return the absolute path of the committed file called `name`."""
        if name not in self.files:
            raise KeyError(
                f"stage {self.stage!r} has no file {name!r}; files: {sorted(self.files)}"
            )
        return self.directory / self.files[name].path

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as the JSON document stored in `manifest.json`."""
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "stage": self.stage,
            "key": self.key,
            "created": self.created,
            "files": {name: dataclasses.asdict(entry) for name, entry in self.files.items()},
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any], directory: Path) -> Manifest:
        """Parse a `manifest.json` document, raising ValueError when it is malformed."""
        version = document.get("format_version")
        if version != MANIFEST_FORMAT_VERSION:
            raise ValueError(
                f"manifest format version {version!r} is not {MANIFEST_FORMAT_VERSION}"
            )

        files = {}
        for name, entry in document["files"].items():
            _check_relative_path(entry["path"])
            files[name] = ManifestEntry(path=entry["path"], sha256=entry["sha256"])

        return cls(
            stage=document["stage"],
            key=document["key"],
            files=files,
            created=document["created"],
            extra=dict(document["extra"]),
            directory=directory,
        )


def _check_relative_path(path: str) -> None:
    parts = PurePosixPath(path).parts
    if not isinstance(path, str) or PurePosixPath(path).is_absolute() or ".." in parts:
        raise ValueError(f"manifest path {path!r} is not inside the stage folder")


# ---------------------------------------------------------------------------------------------
# The store


class StageStore:
    """Stage output folders under `$MEGU_HOME/stages`, each trusted only through its manifest."""

    def __init__(self, root: PathLike | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else megu_home() / "stages"

    def stage_dir(self, stage: str, key: str) -> Path:
        """Return the folder where a stage run writes its outputs, creating it."""
        directory = self._entry_dir(stage, key)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def lookup(self, stage: str, key: str) -> Manifest | None:
        """Return the committed manifest of a stage run, or None when no valid entry exists.

        An entry is valid when its manifest parses and every listed file exists with its
        recorded sha256. The reason for a miss is logged.
        """
        directory = self._entry_dir(stage, key)
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            logger.debug("cache miss for stage %s key %s: no manifest", stage, key)
            return None

        manifest = _load_manifest(manifest_path, directory)
        if manifest is None:
            return None
        if (manifest.stage, manifest.key) != (stage, key):
            logger.warning(
                "ignoring %s: it records stage %s key %s",
                manifest_path,
                manifest.stage,
                manifest.key,
            )
            return None

        problem = _first_invalid_file(manifest)
        if problem is not None:
            logger.warning("cache entry for stage %s key %s is stale: %s", stage, key, problem)
            return None

        logger.info("cache hit for stage %s key %s", stage, key)
        return manifest

    def commit(
        self,
        stage: str,
        key: str,
        files: Mapping[str, PathLike],
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Record the files of a finished stage run, writing the manifest last.

        `files` maps a name to a path inside `stage_dir(stage, key)`, absolute or relative
        to that folder. `extra` must be JSON-serialisable.
        """
        directory = self.stage_dir(stage, key)
        entries = {name: _entry_for(directory, name, path) for name, path in files.items()}

        manifest = Manifest(
            stage=stage,
            key=key,
            files=entries,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            extra=dict(extra or {}),
            directory=directory,
        )
        atomic_write_json(directory / MANIFEST_NAME, manifest.to_json())

        logger.info("committed stage %s key %s with %d files", stage, key, len(entries))
        return manifest

    def invalidate(self, stage: str, key: str) -> bool:
        """Remove the manifest of a stage run so that it is recomputed.

        Returns whether a manifest existed. The files stay in place until the next run
        overwrites them.
        """
        manifest_path = self._entry_dir(stage, key) / MANIFEST_NAME
        existed = manifest_path.is_file()
        manifest_path.unlink(missing_ok=True)
        return existed

    def _entry_dir(self, stage: str, key: str) -> Path:
        _check_stage_name(stage)
        if not isinstance(key, str) or not _SHA256_HEX.fullmatch(key):
            raise ValueError(f"invalid cache key {key!r}; use the value returned by stage_key")
        return self.root / stage / key


def _load_manifest(manifest_path: Path, directory: Path) -> Manifest | None:
    try:
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
        return Manifest.from_json(document, directory)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("ignoring unreadable manifest %s: %s", manifest_path, exc)
        return None


def _first_invalid_file(manifest: Manifest) -> str | None:
    """Return why the first listed file cannot be trusted, or None when all can."""
    for name, entry in manifest.files.items():
        path = manifest.directory / entry.path
        if not path.is_file():
            return f"file {name!r} ({path}) is missing"

        digest = file_digest(path)
        if digest != entry.sha256:
            return f"file {name!r} ({path}) has sha256 {digest}, expected {entry.sha256}"
    return None


def _entry_for(directory: Path, name: str, path: PathLike) -> ManifestEntry:
    if not isinstance(name, str) or not name:
        raise ValueError(f"file names in a manifest must be non-empty strings, got {name!r}")

    resolved = (directory / path).resolve()  # an absolute `path` replaces `directory`
    try:
        relative = resolved.relative_to(directory.resolve())
    except ValueError as exc:
        raise ValueError(
            f"file {name!r} at {path} is outside the stage folder {directory}; write stage "
            "outputs under StageStore.stage_dir(stage, key)"
        ) from exc

    if relative.as_posix() == MANIFEST_NAME:
        raise ValueError(f"file {name!r} cannot be the manifest itself")
    if not resolved.is_file():
        raise ArtifactError(f"file {name!r} at {resolved} not found; write it before commit")
    return ManifestEntry(path=relative.as_posix(), sha256=file_digest(resolved))
