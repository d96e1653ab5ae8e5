"""The caching machinery every pipeline task shares.

A stage's cache key is computed by megu (`megu_core.stage_cache.stage_key`) from the content
digests of its input files, its configuration sections and its code version; Prefect only
receives that key. Before Prefect may serve a cached result, the key function checks that
the stage's files still exist under MEGU_HOME with their recorded digests; if not, it hands
Prefect a one-off key so the task runs and rewrites them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from prefect.context import TaskRunContext

from megu_core.methods import get_method
from megu_core.pipeline.common import StageOutput
from megu_core.stage_cache import Manifest, StageStore, megu_home, stage_key

# Bump a stage's version when its code changes what it writes, so old cache entries are not reused.
CODE_VERSIONS = {
    "prepare": "1",
    "train": "1",
    "features": "1",
    "concepts": "1",
    "noise": "1",
    "unlearn": "1",
    "evaluate": "1",
}

# The configuration sections each stage's output depends on.
CONFIG_SECTIONS = {
    "prepare": ("data", "forget", "forget_seed"),
    "train": ("data", "model", "train"),
    "features": ("features",),
    "concepts": ("oracle", "transition"),
    "noise": ("noise",),
    "unlearn": ("method", "method_params", "budget"),
    "evaluate": (),
}

StageRef = dict[str, Any]  # what a task returns: see `stage_ref`


def input_digests(inputs: Mapping[str, StageRef | None]) -> dict[str, str]:
    """Collect the sha256 of every file of every upstream stage, named `<input>.<file>`."""
    digests = {}
    for name, ref in inputs.items():
        if ref is None:
            continue
        for file_name, entry in ref["files"].items():
            digests[f"{name}.{file_name}"] = entry["sha256"]
    return digests


def compute_stage_key(
    stage: str,
    cfg: Mapping[str, Any],
    inputs: Mapping[str, StageRef | None],
    options: Mapping[str, Any],
) -> str:
    """megu's content key of one stage run."""
    config = {section: cfg[section] for section in CONFIG_SECTIONS[stage]}
    config["options"] = dict(options)
    if stage == "unlearn":
        version = get_method(cfg["method"]).cache_version
        if version is not None:
            config["method_version"] = version
    return stage_key(stage, CODE_VERSIONS[stage], config, input_digests(inputs))


def prefect_cache_key(stage: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """Build a Prefect cache_key_fn for `stage` that reports a hit only for valid files.

    The MEGU_HOME folder is part of the Prefect key: two homes with identical content must not
    hand each other paths.
    """

    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        key = compute_stage_key(
            stage, parameters["cfg"], parameters["inputs"], parameters.get("options") or {}
        )
        home = hashlib.sha256(str(megu_home()).encode()).hexdigest()[:12]
        if StageStore().lookup(stage, key) is None:
            return f"megu-{stage}-{key}-miss-{uuid.uuid4().hex}"
        return f"megu-{stage}-{key}-{home}"

    return cache_key


def stage_ref(manifest: Manifest, computed: bool) -> StageRef:
    """The JSON-able reference a task returns: files with digests, the summary, and whether it ran."""
    return {
        "stage": manifest.stage,
        "key": manifest.key,
        "dir": str(manifest.directory),
        "files": {
            name: {"path": str(manifest.path(name)), "sha256": entry.sha256}
            for name, entry in manifest.files.items()
        },
        "summary": manifest.extra,
        "computed": computed,
    }


def run_cached(
    stage: str,
    cfg: Mapping[str, Any],
    inputs: Mapping[str, StageRef | None],
    options: Mapping[str, Any],
    refresh: bool,
    compute: Callable[[Any], StageOutput],
) -> StageRef:
    """Return the stored outputs of this stage run, or compute, store and return them.

    `refresh` recomputes even when valid outputs exist. The old manifest is removed first,
    so a crash during recomputation leaves no entry that a later run would trust.
    """
    store = StageStore()
    key = compute_stage_key(stage, cfg, inputs, options)
    if not refresh:
        manifest = store.lookup(stage, key)
        if manifest is not None:
            return stage_ref(manifest, computed=False)

    store.invalidate(stage, key)
    output = compute(store.stage_dir(stage, key))
    manifest = store.commit(stage, key, output.files, output.summary)
    return stage_ref(manifest, computed=True)


def file_path(ref: StageRef, name: str) -> str:
    """Return the absolute path of one file of a stage's outputs."""
    return ref["files"][name]["path"]
