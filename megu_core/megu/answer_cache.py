"""The concept oracles' answer cache: one JSON file per candidate score under MEGU_HOME.

An entry is keyed by the sha256 of the question's fields: the backend, model and its digest,
the prompt and its version, the settings that change answers, the target, the candidate and
(for MLLM oracles) the exemplar image hashes. The file name is that hash alone, so no part of
an answer ever becomes a path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from megu_core.artifacts import atomic_write_json
from megu_core.stage_cache import megu_home

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
MAX_STORED_ANSWER_CHARS = 20_000  # the raw answer is kept for people reading the cache


@dataclass(frozen=True)
class Answer:
    """One candidate's score in [0, 1] and the text it was derived from, for the cache."""

    score: float
    text: str


class AnswerCache:
    """Oracle answers on disk, one JSON file per candidate score, keyed by a hash of the question.

    Files are written atomically, so concurrent writers and crashes leave whole entries only.
    An entry whose stored question differs from the one asked, or whose score is outside
    [0, 1], is ignored with a warning and asked again.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else megu_home() / "oracle_cache"

    @staticmethod
    def key(fields: Mapping[str, Any]) -> str:
        """Return the sha256 hex digest of the canonical JSON form of `fields`."""
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, fields: Mapping[str, Any]) -> Path:
        """Return the file of the entry for `fields`."""
        key = self.key(fields)
        return self.root / key[:2] / f"{key}.json"

    def get(self, fields: Mapping[str, Any]) -> float | None:
        """Return the cached score for `fields`, or None when absent or unreadable."""
        path = self.path(fields)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            score = entry["score"]
            valid = (
                entry.get("format") == CACHE_FORMAT_VERSION
                and entry.get("fields") == json.loads(json.dumps(fields))
                and isinstance(score, int | float)
                and 0.0 <= score <= 1.0
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable oracle cache entry %s: %s", path, exc)
            return None
        if not valid:
            log.warning("ignoring oracle cache entry %s: it does not match its question", path)
            return None
        return float(score)

    def put(self, fields: Mapping[str, Any], answer: Answer) -> None:
        """Store `answer` for `fields`, replacing any entry."""
        entry = {
            "format": CACHE_FORMAT_VERSION,
            "fields": dict(fields),
            "score": answer.score,
            "answer": answer.text[:MAX_STORED_ANSWER_CHARS],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(self.path(fields), entry)
