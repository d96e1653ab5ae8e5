"""Promotion and rollback of registered model versions, and the version listing of `megu models`.

Promotion moves an alias such as `production` to a version only when the version's verdict tag
(`megu.verdict`, written when a queued forget request is processed) is `passed`, or when the
caller forces it. Each registered model keeps, per alias, the versions that held the alias in
the tag `megu.alias_history.<alias>` (a JSON list, oldest first), so that `rollback` can move
the alias back to the previous holder. Every move is recorded twice: in version tags, which
every machine sharing the MLflow store reads, and as a row of
`$MEGU_HOME/registry/promotions.parquet` (artifact schema `promotion`).

NOTE: two promotions of one model at the same moment can interleave their read and write of
the history tag, so one of them may be missing from it. The Parquet log keeps both.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import filelock
import pyarrow as pa

from megu_core import tracking
from megu_core.artifacts import SCHEMAS, read_table, write_table
from megu_core.errors import MeguError
from megu_core.request_queue import utc_now
from megu_core.stage_cache import megu_home
from megu_core.verdict import PASSED

logger = logging.getLogger(__name__)

R = TypeVar("R")

# Model version tags of the audit trail, written when a queued request is processed.
TAG_VERDICT = "megu.verdict"  # passed or failed
TAG_VERDICT_SUMMARY = "megu.verdict_summary"  # the failed checks, or every check when all passed
TAG_QUEUE_REQUEST = "megu.queue_request_id"  # id in the forget-request queue
TAG_REQUEST_NOTE = "megu.request_note"
# Model version tags written by promote and rollback; `<alias>` is replaced by the alias.
TAG_PROMOTED = "megu.promoted.{alias}"  # JSON: time, actor, previous version, forced, reason
TAG_ROLLED_BACK = "megu.rolled_back.{alias}"  # JSON: time, actor, version restored
# Registered model tag: the versions that held an alias, oldest first.
TAG_ALIAS_HISTORY = "megu.alias_history.{alias}"

PIPELINE_ALIASES = ("original", "unlearned")  # moved by every pipeline run, so not promotable
MODEL_PREFIX = "megu-"  # registered model names that megu creates


class PromotionError(MeguError):
    """A promotion or rollback is not allowed, or its model or version does not exist."""


@dataclass(frozen=True)
class AliasMove:
    """One promotion or rollback of an alias."""

    registered_model: str
    alias: str
    action: str  # promote or rollback
    version: int  # the version the alias points at afterwards
    previous_version: int | None
    verdict: str | None
    forced: bool
    reason: str | None
    actor: str
    at: str


@dataclass(frozen=True)
class VersionSummary:
    """One model version with its aliases and the audit tags `megu models` shows."""

    registered_model: str
    version: int
    aliases: tuple[str, ...]
    role: str | None  # original or unlearned
    method: str | None
    forget_request: str | None
    queue_request_id: str | None
    verdict: str | None
    source_version: int | None
    created_at: str


def promote(
    version: int,
    alias: str = "production",
    model: str | None = None,
    force: bool = False,
    reason: str | None = None,
) -> AliasMove:
    """Point `alias` at `version` if its verdict passed, or regardless of it with `force`."""
    _check_alias(alias)
    name = resolve_model_name(model)
    target = _get_version(name, version)
    verdict = target.tags.get(TAG_VERDICT)
    if verdict != PASSED and not force:
        raise PromotionError(
            f"{name} version {version} has verdict {verdict or 'none'}, not {PASSED}"
            f"{_verdict_hint(target.tags)}; promote a version whose verdict passed, or pass "
            "--force with a --reason to promote it anyway"
        )

    history = _history(name, alias)
    previous = _alias_holder(name, alias)
    if previous == version:
        raise PromotionError(f"alias {alias!r} of {name} already points at version {version}")
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)  # the alias was moved outside megu, e.g. in the MLflow UI
    move = AliasMove(
        registered_model=name,
        alias=alias,
        action="promote",
        version=version,
        previous_version=previous,
        verdict=verdict,
        forced=verdict != PASSED,
        reason=reason,
        actor=_actor(),
        at=utc_now(),
    )
    tracking.set_alias(name, alias, version)
    _set_history(name, alias, [*history, version])
    tracking.set_version_tags(name, version, {TAG_PROMOTED.format(alias=alias): _tag_json(move)})
    _log_move(move)
    return move


def rollback(alias: str = "production", model: str | None = None) -> AliasMove:
    """Move `alias` back to the version that held it before the current one."""
    _check_alias(alias)
    name = resolve_model_name(model)
    current = _alias_holder(name, alias)
    if current is None:
        raise PromotionError(
            f"alias {alias!r} of {name} is not set, so there is nothing to roll back"
        )

    history = _history(name, alias)
    if history and history[-1] == current:
        history.pop()
    if not history:
        raise PromotionError(
            f"no version held alias {alias!r} of {name} before version {current}; promote "
            "another version instead"
        )

    restored = history[-1]
    move = AliasMove(
        registered_model=name,
        alias=alias,
        action="rollback",
        version=restored,
        previous_version=current,
        verdict=_get_version(name, restored).tags.get(TAG_VERDICT),
        forced=False,
        reason=None,
        actor=_actor(),
        at=utc_now(),
    )
    tracking.set_alias(name, alias, restored)
    _set_history(name, alias, history)
    tracking.set_version_tags(name, current, {TAG_ROLLED_BACK.format(alias=alias): _tag_json(move)})
    _log_move(move)
    return move


def resolve_model_name(model: str | None) -> str:
    """Return `model` if it is registered, else the only megu model, else raise naming them."""
    names = registered_model_names()
    if model is not None:
        if model not in names and not _registered(model):
            raise PromotionError(f"registered model {model!r} not found; registered: {names}")
        return model
    if len(names) == 1:
        return names[0]
    if not names:
        raise PromotionError(
            f"no registered megu model in {tracking.registry_uri()}; process a forget "
            "request or run `megu run` first"
        )
    raise PromotionError(f"several registered models {names}; choose one with --model NAME")


def registered_model_names() -> list[str]:
    """Return the names of the registered models megu created, sorted."""
    client = tracking.get_client()
    found = _call(client.search_registered_models, f"name LIKE '{MODEL_PREFIX}%'")
    return sorted(model.name for model in found)


def list_versions(model: str | None = None) -> list[VersionSummary]:
    """Return every version of `model`, or of every megu model, newest first per model."""
    names = [resolve_model_name(model)] if model else registered_model_names()
    client = tracking.get_client()
    summaries = []
    for name in names:
        # Versions from a search carry no aliases in MLflow 3.17.2, so they come from the model.
        aliases = _aliases_by_version(name)
        versions = _call(client.search_model_versions, f"name = '{_quoted(name)}'")
        found = [_summary(version, aliases.get(int(version.version), ())) for version in versions]
        summaries += sorted(found, key=lambda summary: -summary.version)
    return summaries


def read_promotion_log(home: Path | None = None) -> list[AliasMove]:
    """Return the promotions and rollbacks recorded under MEGU_HOME, oldest first."""
    path = _log_path(home)
    if not path.is_file():
        return []
    return [AliasMove(**row) for row in read_table(path, "promotion").to_pylist()]


def _summary(version: Any, aliases: tuple[str, ...]) -> VersionSummary:
    tags = dict(version.tags)
    source = tags.get(tracking.TAG_SOURCE_VERSION)
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
    return VersionSummary(
        registered_model=version.name,
        version=int(version.version),
        aliases=aliases,
        role=tags.get("megu.role"),
        method=tags.get("megu.method"),
        forget_request=tags.get(tracking.TAG_FORGET_REQUEST),
        queue_request_id=tags.get(TAG_QUEUE_REQUEST),
        verdict=tags.get(TAG_VERDICT),
        source_version=int(source) if source else None,
        created_at=created.isoformat(timespec="seconds"),
    )


def _check_alias(alias: str) -> None:
    if alias in PIPELINE_ALIASES:
        raise PromotionError(
            f"alias {alias!r} is moved by every pipeline run; promote to another alias, "
            "such as production or staging"
        )
    if not alias or alias == "latest" or (alias[0] == "v" and alias[1:].isdigit()):
        raise PromotionError(
            f"invalid alias {alias!r}: MLflow reserves 'latest' and v<number>; use a name "
            "such as production"
        )


def _verdict_hint(tags: dict[str, str]) -> str:
    summary = tags.get(TAG_VERDICT_SUMMARY)
    return f" ({summary})" if summary else ""


def _get_version(name: str, version: int) -> tracking.CheckpointVersion:
    known = [summary.version for summary in list_versions(name)]
    if version not in known:
        raise PromotionError(f"{name} has no version {version}; versions: {sorted(known)}")
    return tracking.get_version(name, version)


def _aliases_by_version(name: str) -> dict[int, tuple[str, ...]]:
    registered = _call(tracking.get_client().get_registered_model, name)
    by_version: dict[int, list[str]] = {}
    for alias, version in dict(registered.aliases).items():
        by_version.setdefault(int(version), []).append(alias)
    return {version: tuple(sorted(aliases)) for version, aliases in by_version.items()}


def _alias_holder(name: str, alias: str) -> int | None:
    registered = _call(tracking.get_client().get_registered_model, name)
    holder = dict(registered.aliases).get(alias)
    return None if holder is None else int(holder)


def _history(name: str, alias: str) -> list[int]:
    registered = _call(tracking.get_client().get_registered_model, name)
    text = dict(registered.tags).get(TAG_ALIAS_HISTORY.format(alias=alias))
    return [int(version) for version in json.loads(text)] if text else []


def _set_history(name: str, alias: str, history: list[int]) -> None:
    key = TAG_ALIAS_HISTORY.format(alias=alias)
    value = json.dumps(history[-200:])  # well below MLflow's 5,000-character tag limit
    _call(tracking.get_client().set_registered_model_tag, name, key, value)


def _registered(name: str) -> bool:
    client = tracking.get_client()
    return bool(_call(client.search_registered_models, f"name = '{_quoted(name)}'"))


def _log_move(move: AliasMove) -> None:
    path = _log_path()
    with _log_lock(path):
        rows = read_table(path, "promotion").to_pylist() if path.is_file() else []
        rows.append(vars(move))
        write_table(pa.Table.from_pylist(rows, schema=SCHEMAS["promotion"]), path, "promotion")
    logger.info(
        "%s %s alias %s: version %s -> %s%s",
        move.action,
        move.registered_model,
        move.alias,
        "unset" if move.previous_version is None else move.previous_version,
        move.version,
        " (forced)" if move.forced else "",
    )


def _log_path(home: Path | None = None) -> Path:
    return (home or megu_home()) / "registry" / "promotions.parquet"


@contextmanager
def _log_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{path}.lock", timeout=60):
        yield


def _tag_json(move: AliasMove) -> str:
    return json.dumps(
        {
            "at": move.at,
            "actor": move.actor,
            "version": move.version,
            "previous_version": move.previous_version,
            "forced": move.forced,
            "reason": move.reason,
        },
        sort_keys=True,
    )


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry, e.g. in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _call(method: Callable[..., R], *args: Any) -> R:
    return tracking.retry_on_locked(method)(*args)
