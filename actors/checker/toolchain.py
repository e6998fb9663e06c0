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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import runner_template
from actors.checker.rules import Finding

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
    """mypy's cache, shared by the runs of one checker process (a cold run costs seconds, a warm one
    a fraction); None uses a throwaway one per run."""


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
    link = into / "runner_template"
    if not link.exists():
        link.symlink_to(runner_template_dir(), target_is_directory=True)
    return into


async def _run(args: Sequence[str], cwd: Path, timeout: float) -> tuple[int, str, str] | None:
    """Run a tool; None when it outlived `timeout` (it is killed)."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=minimal_env(), stdin=asyncio.subprocess.DEVNULL,
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
        lib = link_runner_template(work / "lib")
        config = work / "mypy.ini"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        config.write_text(_MYPY_CONFIG.format(version=version, path=lib), encoding="utf-8")
        cache = toolchain.cache_dir or work / "cache"
        result = await _run(
            [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache),
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
            [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--ignore-noqa",
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
