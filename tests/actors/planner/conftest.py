"""Fixtures of the planner's tests."""

from __future__ import annotations

import pytest

from actors.checker.toolchain import Toolchain


@pytest.fixture(scope="session")
def toolchain(tmp_path_factory: pytest.TempPathFactory) -> Toolchain:
    """The checker's tools with one mypy cache for the planner's real-document tests (under pytest's own temp
    dir, which pytest prunes: a cache per run would otherwise stay behind in /tmp)."""
    return Toolchain(cache_dir=tmp_path_factory.mktemp("mypy-cache"))
