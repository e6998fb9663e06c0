"""mypy --strict and ruff over a generated module, as child processes of this interpreter's environment.

Neither tool runs the code it reads. Each runs in a fresh temp dir holding only the module, with a
minimal environment (no BMMS_* settings, no secrets), under a timeout; `runner_template` is made
importable for mypy through a directory holding only a link to it, so the module sees the runner's API and
nothing else of this repository. Their findings map onto the same `Finding` the static rules use, with
the tool's own code as the rule: `mypy[return-value]`, `ruff[S608]`.

Ruff rules for generated code (`RUFF_SELECT`): correctness and safety, not style. F (pyflakes: undefined
names, unused imports and variables), E7/E9 (statement and syntax errors), B (bugbear: mutable defaults,
loop-variable capture...), S (bandit: the security checks, a second net under the static rules), ASYNC
(blocking calls in async tools), PLE (pylint errors). Layout and naming rules are left
out: the code is rendered, not read, and a line-length complaint would fail a build for a long docstring.
`--ignore-noqa` and `--isolated` make ruff ignore any `# noqa` and any configuration but ours.

mypy's cache, and why a warm one is safe to share between tenants' builds. A cold mypy run analyses the
runner's API and everything it imports (pydantic, the MCP SDK, httpx...: about 1,000 modules, 2-4 s on two
cores, far more while a stack starts); a warm one reads them back from the cache (0.2-0.3 s). So the checker
keeps one cache for all its runs, in its data dir (it survives restarts), and fills it when it starts
(`warm_up`: one module importing everything generated code may import, `warm_up_source`). mypy keys the
cache itself: a different mypy version or Python version, or other options, abandon an entry, and an entry
is used only for a file of the same size and SHA-1 of its content (a new runner_template is re-analysed;
verified against mypy's `validate_meta`). Generated code cannot poison it for other tenants:
- each run checks one module, under its own name (`bmms_server_<plan hash>`), in a temp dir of its own that
  is removed after; its cache entry is that name's, used again only for the same source;
- a module named like a cached one replaces that entry (`opentelemetry`, a namespace package the runner's
  API imports, has the same key as a module of that name), and the next run that needs it finds it stale
  (another size or content) and analyses the real one again: it costs that run time, it changes no one's
  findings (tests/actors/checker/test_check_progress.py shows it). A package's entry
  (`runner_template/__init__`) is not even the same key, and stdlib names are refused by mypy ("shadows
  library module");
- mypy never runs the code it reads, and no plugin is configured (inline `# mypy:` options are refused by
  the static rules first); both tools start in Python's isolated mode (`-I`), so a module in their working
  directory named like one they import (`typing.py`, `ruff.py`) is not imported by them;
- the runner_template link lives next to the cache (a stable path, so warm runs do not rewrite the
  runner's entries) and holds only the link; the sandboxed sample run sees neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import runner_template
from actors.checker.rules import ALLOWED_MODULES, PUBLIC_SDK, Finding

log = logging.getLogger("bmms.checker")

RUFF_SELECT = ("F", "E7", "E9", "B", "S", "ASYNC", "PLE")
"""Ruff rule families applied to generated modules (see the module docstring for why these)."""
RUFF_IGNORE = ("S101", "S105", "S106", "S107")
"""`assert` is fine in a tool (a failed one raises, which the runner reports as a tool error); the
hardcoded-password heuristics misfire on secret *names* (`secret='API_TOKEN'`), which generated code refers
to by design while the values stay with the runner."""

_MYPY_CONFIG = """[mypy]
strict = True
follow_imports = silent
warn_unused_ignores = True
python_version = {version}
mypy_path = {path}
"""


@dataclass(frozen=True)
class Toolchain:
    """Where the type checker and linter run, and for how long."""

    timeout_seconds: float = 120.0
    """Upper bound for each tool; a tool that takes longer is a failed check, not a pass."""
    cache_dir: Path | None = None
    """mypy's cache, shared by every run (a cold run costs seconds, a warm one a fraction; the checker actor
    keeps it in its data dir); None uses a throwaway one per run."""

    def search_path(self, work: Path) -> Path:
        """The directory mypy finds `runner_template` in: next to the cache (one stable path, so warm runs
        find the runner's entries fresh as they are), or in this run's own `work` dir."""
        return link_runner_template(work / "lib" if self.cache_dir is None else self.cache_dir / "mypy_path")


MAX_CACHE_BYTES = 512 * 1024**2
"""A cache grown past this (each checked module adds its entry, a few KB) is emptied at the next warm-up."""
WARM_UP_MODULE = "bmms_checker_warm_up"
"""The warm-up module's name (generated modules are `bmms_server_...`)."""


def minimal_env() -> dict[str, str]:
    """The environment tools and sandboxed runners get: enough to run Python, nothing secret."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/bin:/bin")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def runner_template_dir() -> Path:
    """The directory of the trusted runner_template package."""
    # an editable install may make it a namespace package: take its first search location
    return Path(next(iter(runner_template.__path__))).resolve()


def link_runner_template(into: Path) -> Path:
    """Make `into` a search path holding `runner_template` (a link to the trusted package) and nothing else."""
    into.mkdir(parents=True, exist_ok=True)
    link, target = into / "runner_template", runner_template_dir()
    if link.is_symlink() and link.readlink() == target:
        return into
    # Made aside and renamed over: runs side by side never see it missing (an older link, from a checker
    # installed elsewhere, is replaced).
    fresh = into / f".runner_template-{os.getpid()}-{time.monotonic_ns()}"
    fresh.symlink_to(target, target_is_directory=True)
    fresh.replace(link)
    return into


async def _run(args: Sequence[str], cwd: Path, timeout: float) -> tuple[int, str, str] | None:
    """Run `python -I ARGS` (isolated: its working directory is not on its import path); None when it
    outlived `timeout` (it is killed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", *args, cwd=cwd, env=minimal_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _mypy_findings(stdout: str, file: str) -> list[Finding]:
    findings = []
    for line in stdout.splitlines():
        try:
            item: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item.get("severity") != "error":
            continue  # notes repeat or explain the error before them
        findings.append(Finding(
            int(item.get("line") or 1), int(item.get("column") or 0) + 1, f"mypy[{item.get('code') or 'error'}]",
            str(item.get("message", "")), "error", file,
        ))
    return findings


def _ruff_findings(stdout: str, file: str) -> list[Finding]:
    items: list[dict[str, Any]] = json.loads(stdout or "[]")
    return [
        Finding(
            int(item["location"]["row"]), int(item["location"]["column"]), f"ruff[{item.get('code') or 'syntax'}]",
            str(item.get("message", "")), "error", file,
        )
        for item in items
    ]


async def type_check(source: str, module_name: str, toolchain: Toolchain) -> list[Finding]:
    """mypy --strict findings of the module (only its own, not the runner's)."""
    file = f"{module_name}.py"
    with tempfile.TemporaryDirectory(prefix="bmms-check-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        (work / "src" / file).write_text(source, encoding="utf-8")
        lib = toolchain.search_path(work)
        config = work / "mypy.ini"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        config.write_text(_MYPY_CONFIG.format(version=version, path=lib), encoding="utf-8")
        cache = toolchain.cache_dir or work / "cache"
        result = await _run(
            ["-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache),
             "--output", "json", "--no-error-summary", file],
            work / "src", toolchain.timeout_seconds,
        )
    if result is None:
        late = f"mypy did not finish in {toolchain.timeout_seconds:.0f} s"
        return [Finding(1, 1, "mypy-timeout", late, "error", file)]
    code, out, err = result
    findings = _mypy_findings(out, file)
    if code != 0 and not findings:
        detail = (err or out).strip().splitlines()[-1:] or ["no output"]
        findings.append(Finding(1, 1, "mypy-crash", f"mypy exited with {code}: {detail[0]}", "error", file))
    return findings


async def lint(source: str, module_name: str, toolchain: Toolchain) -> list[Finding]:
    """ruff findings of the module under `RUFF_SELECT`."""
    file = f"{module_name}.py"
    with tempfile.TemporaryDirectory(prefix="bmms-lint-") as tmp:
        work = Path(tmp)
        (work / file).write_text(source, encoding="utf-8")
        version = f"py{sys.version_info.major}{sys.version_info.minor}"
        result = await _run(
            ["-m", "ruff", "check", "--isolated", "--no-cache", "--ignore-noqa",
             "--output-format", "json", "--target-version", version,
             "--select", ",".join(RUFF_SELECT), "--ignore", ",".join(RUFF_IGNORE), file],
            work, toolchain.timeout_seconds,
        )
    if result is None:
        late = f"ruff did not finish in {toolchain.timeout_seconds:.0f} s"
        return [Finding(1, 1, "ruff-timeout", late, "error", file)]
    code, out, err = result
    try:
        return _ruff_findings(out, file)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        detail = (err or out).strip().splitlines()[-1:] or ["no output"]
        return [Finding(1, 1, "ruff-crash", f"ruff exited with {code}: {detail[0]}", "error", file)]


async def check_with_tools(source: str, module_name: str, toolchain: Toolchain) -> list[Finding]:
    """mypy and ruff findings together, run side by side."""
    typed, linted = await asyncio.gather(
        type_check(source, module_name, toolchain), lint(source, module_name, toolchain)
    )
    return sorted(typed + linted)


def warm_up_source() -> str:
    """A module importing everything generated code may import (the static rules' `ALLOWED_MODULES` and
    `PUBLIC_SDK`), so one check of it leaves all of it in mypy's cache."""
    modules = sorted(ALLOWED_MODULES | set(PUBLIC_SDK))
    return '"""The checker\'s warm-up: what generated code may import."""\n' + "".join(f"import {m}\n" for m in modules)


async def warm_up(toolchain: Toolchain) -> list[Finding]:
    """Fill mypy's cache before the first real check (emptied first if it grew past `MAX_CACHE_BYTES`);
    the warm-up module's findings, which should be none."""
    if toolchain.cache_dir is not None and _size(toolchain.cache_dir) > MAX_CACHE_BYTES:
        log.info("mypy cache %s is over %d MB: emptied", toolchain.cache_dir, MAX_CACHE_BYTES // 1024**2)
        shutil.rmtree(toolchain.cache_dir, ignore_errors=True)
    return await type_check(warm_up_source(), WARM_UP_MODULE, toolchain)


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())
