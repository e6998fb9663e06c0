"""Running `wrk` and reading its figures, for every benchmark that loads an HTTP route."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class WrkRun:
    """What one `wrk --latency` run printed."""

    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: str
    """Non-2xx answers and socket errors, if any ("" when none)."""


def _figure(pattern: str, out: str) -> str:
    found = re.search(pattern, out, re.M)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{out}")
    return found.group(1)


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    if m is None:
        raise RuntimeError(f"not a wrk duration: {value!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def run_wrk(url: str, connections: int, seconds: int, *, headers: dict[str, str] | None = None,
            script: Path | None = None) -> WrkRun:
    """One thread of `wrk` against `url` for `seconds` with `connections` (a Lua `script` for POSTs)."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    errors = [m.group(0) for m in re.finditer(r"Non-2xx or 3xx responses:\s+\d+|Socket errors:.*", out)]
    return WrkRun(
        rps=float(_figure(r"Requests/sec:\s+([\d.]+)", out)), requests=int(_figure(r"(\d+) requests in", out)),
        p50_ms=_ms(_figure(r"^\s+50%\s+(\S+)", out)), p99_ms=_ms(_figure(r"^\s+99%\s+(\S+)", out)),
        errors=" ".join(errors),
    )
