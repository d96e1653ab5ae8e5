"""The unlearn stage key follows each method's cache version."""

from __future__ import annotations

import pytest

from megu_core.methods import get_method
from megu_core.stage_cache import stage_key
from tasks.stage import CODE_VERSIONS, compute_stage_key

CFG = {"method": "finetune", "method_params": {}, "budget": {"epochs": 1.0}}


def _key(cfg=CFG):
    return compute_stage_key("unlearn", cfg, {}, {})


def test_unversioned_method_keeps_old_key():
    config = {"method": "finetune", "method_params": {}, "budget": {"epochs": 1.0}, "options": {}}

    assert get_method("finetune").cache_version is None
    assert _key() == stage_key("unlearn", CODE_VERSIONS["unlearn"], config, {})


def test_bumping_a_method_version_changes_only_its_keys(monkeypatch):
    finetune_before = _key()
    scrub_cfg = {**CFG, "method": "scrub"}
    scrub_before = _key(scrub_cfg)

    monkeypatch.setattr(get_method("finetune"), "cache_version", "7")

    assert _key() != finetune_before
    assert _key(scrub_cfg) == scrub_before


@pytest.mark.parametrize("method", ["scrub", "ssd"])
def test_changed_methods_carry_a_version(method):
    assert get_method(method).cache_version is not None
