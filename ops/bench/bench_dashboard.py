"""Dashboard benchmark, all figures from one run on one machine, in a headless browser (Debian's chromium).

1. **Publish -> painted** latency of build log lines on the build page (`/dashboard/builds/{id}`). The bench
   publishes N `LogLine` events (paced, so it measures latency and not a backlog) onto a build's own subject,
   `builds.<org>.<build>.log`, with an admin NATS connection and a JetStream publish with a message id, as
   the actors do (`actors/runtime/build_events.emit`); each line's text carries its publish time
   (`time.time()`, ms). In the page it records, per line, when its WebSocket frame reached the page (a
   listener registered before the page's own, by wrapping `WebSocket` in an init script) and when it was
   painted (a MutationObserver on `#log`, then the next animation frame, then the first task after that
   frame: the frame's style, layout and paint are done by then). It prints p50/p95/p99 of publish -> frame
   (the WebSocket's own figure: bus, gateway feed, socket), publish -> painted, and painted - frame (the
   page's own cost), the target being p99(painted - frame) <= 50 ms.

   Which build: the page follows a build only through the gateway's stream, which accepts a build the
   registry knows (`GET_BUILD`), replays its whole history and closes the socket after `deployed` or
   `failed` (`gateway/feeds.py`); the page then stops following it. Lines published onto a finished
   build's subject would never reach the page, and a made-up build id is refused (4404). So the bench
   creates a real build (`POST /v1/builds`, plain words) on a stack whose model is a local TCP port that
   accepts connections and never answers (`BMMS_LLM_BASE_URL`, `BMMS_LLM_TIMEOUT=600`): the build is
   requested, its plan step starts and then waits on the model, so for the whole measurement it is a live,
   unfinished build, followed by the page through the gateway's real feed, and our lines travel exactly
   the path a planner's or deployer's log lines take.

2. **Time to first byte** of the server-rendered pages (`/dashboard`, `/dashboard/new`,
   `/dashboard/builds/{id}`, `/dashboard/servers/{id}`, `/dashboard/usage`, `/dashboard/org`, `/sign-in`)
   with the session cookie: with httpx (sequential requests on one keep-alive connection; the time from
   sending to the response's headers), and as the browser's Navigation Timing `responseStart -
   requestStart` (each navigation once the previous page went idle: the build page replays its whole
   history after `load`, and a navigation started meanwhile took up to 1 s here, in the browser, while httpx
   saw the same page in under 10 ms). The server page is that of a server the bench builds from a tool
   spec first. Target: p95 <= 50 ms. Besides, the time from navigation start until the build page shows a
   history of N lines (replayed by the stream), for the page's own cost on a long build.

It starts a private `bmms dev` stack (embedded NATS and PostgreSQL, every actor, the gateway) in a temp dir,
signs in by opening the link `bmms dev` prints and pressing its button, as a person does, and prints the
machine's load average at the start and the end: on these shared 2-core VMs the figures move with it.
Run: `.venv/bin/python -m ops.bench.bench_dashboard`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from playwright.async_api import Browser, Page, async_playwright

from actors.runtime.actor import utc_now
from actors.runtime.codec import encode
from bus_schemas.builds import FunctionBody, LogLine, ToolParameter, ToolSpec, ToolSpecSource
from bus_schemas.registry import build_subject
from ops.bench.bench_gateway import Stack, http_json, machine_times, start_stack

CHROMIUM = os.environ.get("BMMS_BENCH_CHROMIUM", "/usr/bin/chromium")
TARGET_PAINT_P99_MS = 50.0
TARGET_TTFB_P95_MS = 50.0
COOKIE = "bmms_session"
SIGN_IN = "/sign-in"
CALCULATOR = {"name": "bench-calculator", "source": msgspec.to_builtins(ToolSpecSource(tools=(ToolSpec(
    name="add", description="Add two integers.",
    parameters=(ToolParameter(name="a", type="integer"), ToolParameter(name="b", type="integer")),
    implementation=FunctionBody(body="return a + b"),
),)))}
"""The one-tool server `bmms dev`'s printed curl builds: the server whose page is measured."""

# --- in the page ---

RECORD_FRAMES = """
(() => {
  // Runs before the page's scripts: every WebSocket gets, as its first message listener, one that notes when
  // each frame reached the page (ms since the epoch, sub-ms) and keeps the frame's text to be read at the end.
  const frames = [];
  window.__benchFrames = frames;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (message) => {
        frames.push([performance.timeOrigin + performance.now(), message.data]);
      });
    }
  };
})();
"""

OBSERVE_PAINTS = """
() => {
  // For each log line added to #log: when the page's next frame (style, layout, paint) is done with it. A
  // MutationObserver sees the lines as soon as the page's message handler has added them; the next animation
  // frame runs just before that frame is rendered, and a task posted from it runs once rendering is done.
  const painted = {};
  window.__benchPainted = painted;
  const channel = new MessageChannel();
  let waiting = [];
  channel.port1.onmessage = () => {
    const now = performance.timeOrigin + performance.now();
    for (const stamp of waiting) painted[stamp] = now;
    waiting = [];
  };
  let pending = [];
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) {
        const text = node.querySelector && node.querySelector(".text");
        const m = text && /published at ([\\d.]+)/.exec(text.textContent);
        if (m) pending.push(m[1]);
      }
    }
    if (pending.length === 0) return;
    const lines = pending;
    pending = [];
    requestAnimationFrame(() => {
      waiting.push(...lines);
      channel.port2.postMessage(null);
    });
  }).observe(document.getElementById("log"), { childList: true });
}
"""

COLLECT = """
() => {
  // [publish stamp, frame arrival, painted] of every benchmark line the page received.
  const out = [];
  for (const [at, data] of window.__benchFrames) {
    const m = /published at ([\\d.]+)/.exec(data);
    if (m && m[1] in window.__benchPainted) out.push([m[1], at, window.__benchPainted[m[1]]]);
  }
  return out;
}
"""


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """(p50, p95, p99) of `values` (nearest rank)."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(math.ceil(p * len(ordered)) - 1, 0)]

    return statistics.median(ordered), rank(0.95), rank(0.99)


def figure_line(name: str, values: list[float]) -> str:
    p50, p95, p99 = percentiles(values)
    return f"  {name:<34} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  p99 {p99:7.2f} ms  (n={len(values)})"


@contextlib.contextmanager
def silent_model() -> Iterator[str]:
    """A local port that accepts connections (the kernel does, into the backlog) and never answers: as the
    planner's model server it keeps a plain-words build in its plan step. Yields its base URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def wait_for_status(stack: Stack, build_id: str, wanted: set[str], seconds: float) -> dict[str, object]:
    """The build once its status is one of `wanted` (polled: another process's state has no event to wait on)."""
    deadline = time.monotonic() + seconds
    while True:
        build = http_json("GET", f"{stack.url}/v1/builds/{build_id}", stack.key)
        if build["status"] in wanted:
            return build
        if time.monotonic() > deadline:
            raise RuntimeError(f"build {build_id} stayed {build['status']}, expected one of {sorted(wanted)}")
        time.sleep(0.1)


async def sign_in(browser: Browser, stack: Stack) -> tuple[Any, str]:
    """A browser context signed in through the link `bmms dev` printed (open it, press Sign in); with the
    session cookie's value."""
    if not stack.sign_in:
        raise RuntimeError("bmms dev printed no dashboard sign-in link")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(stack.sign_in)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/dashboard")
    await page.close()
    cookies = [c for c in await context.cookies() if c.get("name") == COOKIE]
    if not cookies:
        raise RuntimeError("signing in set no session cookie")
    return context, str(cookies[0].get("value"))


# --- 1. publish -> painted ---


@dataclass
class PaintResult:
    to_frame: list[float]
    to_painted: list[float]
    page_cost: list[float]
    published: int
    clock_offset_ms: float
    """The browser's clock minus ours, measured once (both read the system clock; it should be ~0)."""
    console_errors: list[str]


async def bench_paint(context: Any, stack: Stack, build_id: str, lines: int, rate: float) -> PaintResult:
    """Open the build page, publish `lines` log lines onto the build at `rate` per second, and read back
    when each reached the page and was painted."""
    page: Page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.add_init_script(RECORD_FRAMES)
    await page.goto(f"{stack.url}/dashboard/builds/{build_id}")
    # Live: the page's socket is open and has replayed the build's history so far.
    await page.wait_for_function("() => window.bmmsBuild && window.bmmsBuild.socket "
                                 "&& window.bmmsBuild.socket.readyState === 1 && window.bmmsBuild.lastSeq > 0")
    await page.evaluate(OBSERVE_PAINTS)
    before = time.time() * 1000
    browser_now: float = await page.evaluate("() => performance.timeOrigin + performance.now()")
    offset = browser_now - (before + time.time() * 1000) / 2  # within half the round trip

    nc = await nats.connect(stack.nats_url, user="admin", password=stack.admin_password())
    js = nc.jetstream()
    subject = build_subject(stack.org, build_id, "log")
    run = os.urandom(4).hex()  # message ids unique to this run: JetStream drops a repeated one as a duplicate
    start = time.perf_counter()
    for i in range(lines):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event = LogLine(build_id=build_id, org_id=stack.org, at=utc_now(), step="plan", level="info",
                        message=f"bench line {i} published at {time.time() * 1000:.3f}")
        await js.publish(subject, encode(event), headers={"Nats-Msg-Id": f"{build_id}:bench:{run}:{i}"})
    await nc.close()
    with contextlib.suppress(Exception):  # a line that never came shows in the count, not as a crash
        await page.wait_for_function(f"() => Object.keys(window.__benchPainted).length >= {lines}", timeout=30_000)
    rows: list[list[Any]] = await page.evaluate(COLLECT)
    await page.close()
    to_frame, to_painted, page_cost = [], [], []
    for stamp, frame_at, painted_at in rows:
        published = float(stamp)
        to_frame.append(frame_at - published)
        to_painted.append(painted_at - published)
        page_cost.append(painted_at - frame_at)
    return PaintResult(to_frame, to_painted, page_cost, lines, offset, errors)


HISTORY_SHOWN = """
(count) => new Promise((resolve) => {
  // ms from the navigation's start until #log holds `count` lines.
  const log = document.getElementById("log");
  const check = () => { if (log.children.length >= count) { observer.disconnect(); resolve(performance.now()); } };
  const observer = new MutationObserver(check);
  observer.observe(log, { childList: true });
  check();
})
"""


async def bench_history(context: Any, stack: Stack, build_id: str, lines: int, visits: int) -> list[float]:
    """Open the build page `visits` times: ms from the navigation's start until its whole history (at least
    `lines` lines, replayed by the stream) is in the log."""
    page: Page = await context.new_page()
    times: list[float] = []
    for _ in range(visits):
        await page.goto(f"{stack.url}/dashboard/builds/{build_id}")
        times.append(await page.evaluate(HISTORY_SHOWN, lines))
    await page.close()
    return times


# --- 2. time to first byte ---


def ttfb_httpx(base_url: str, paths: list[tuple[str, str]], cookie: str, requests: int) -> list[str]:
    """Each page `requests` times in a row on one keep-alive connection: send -> response headers. The
    sign-in page without the cookie (with it, it redirects a signed-in person to the dashboard)."""
    lines = [f"TTFB with httpx ({requests} sequential requests per page, one keep-alive connection; "
             "send -> response headers)"]
    with (httpx.Client(base_url=base_url, cookies={COOKIE: cookie}, timeout=10) as signed_in,
          httpx.Client(base_url=base_url, timeout=10) as signed_out):
        for name, path in paths:
            client = signed_out if path == SIGN_IN else signed_in
            for _ in range(5):  # warm-up: templates compiled, caches filled
                client.get(path)
            times: list[float] = []
            statuses: set[int] = set()
            for _ in range(requests):
                began = time.perf_counter()
                with client.stream("GET", path) as response:
                    times.append((time.perf_counter() - began) * 1000)
                    response.read()
                    statuses.add(response.status_code)
            lines.append(ttfb_line(name, times, statuses))
    return lines


def ttfb_line(name: str, times: list[float], statuses: set[int]) -> str:
    p50, p95, _ = percentiles(times)
    met = "met" if p95 <= TARGET_TTFB_P95_MS else "MISSED"
    return (f"  {name:<34} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  max {max(times):6.2f} ms  "
            f"status {','.join(map(str, sorted(statuses)))}  (p95 <= {TARGET_TTFB_P95_MS:.0f} ms: {met})")


async def ttfb_browser(browser: Browser, context: Any, base_url: str, paths: list[tuple[str, str]],
                       visits: int) -> list[str]:
    """Each page `visits` times in the signed-in browser (the sign-in page in a signed-out one): Navigation
    Timing responseStart - requestStart, each navigation once the previous page went idle."""
    lines = [f"TTFB in the browser ({visits} navigations per page; Navigation Timing responseStart - requestStart)"]
    signed_in: Page = await context.new_page()
    signed_out = await (await browser.new_context()).new_page()
    for name, path in paths:
        page = signed_out if path == SIGN_IN else signed_in
        times: list[float] = []
        statuses: set[int] = set()
        for _ in range(visits + 2):
            response = await page.goto(base_url + path)
            if response is not None:
                statuses.add(response.status)
            times.append(await page.evaluate(
                "() => { const n = performance.getEntriesByType('navigation')[0]; "
                "return n.responseStart - n.requestStart; }"))
            # The next navigation once this page is done with its own work (the build page replays its history
            # after `load`): else the figure carries the previous page's leftover work in the browser.
            await page.evaluate("() => new Promise((done) => requestIdleCallback(done, { timeout: 2000 }))")
        lines.append(ttfb_line(name, times[2:], statuses))  # the first two: warm-up
    await signed_in.close()
    await signed_out.context.close()
    return lines


# --- the run ---


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


async def run(stack: Stack, args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    server_build = http_json("POST", stack.url + "/v1/builds", stack.key, CALCULATOR)
    live_build = http_json("POST", stack.url + "/v1/builds", stack.key,
                           {"name": "bench-live", "source": {"kind": "plain_words", "text": "a bench build"}})
    live_id = str(live_build["build_id"])
    deployed = await asyncio.to_thread(wait_for_status, stack, str(server_build["build_id"]),
                                       {"deployed", "failed"}, 180)
    if deployed["status"] != "deployed":
        raise RuntimeError(f"the bench server's build failed: {deployed.get('failure')}")
    server_id = str(deployed["server_id"])
    live = http_json("GET", f"{stack.url}/v1/builds/{live_id}", stack.key)
    if live["status"] in ("deployed", "failed"):
        raise RuntimeError(f"the live bench build ended ({live['status']}: {live.get('failure')})")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            context, cookie = await sign_in(browser, stack)
            out.append(f"browser: chromium {browser.version} (headless); build {live_id} in its plan step, "
                       f"{stack.org}")
            steal_before, total_before = machine_times()
            paint = await bench_paint(context, stack, live_id, args.lines, args.rate)
            steal_after, total_after = machine_times()
            steal = (steal_after - steal_before) / max(total_after - total_before, 1)
            out.append(f"Publish -> painted on the build page: {len(paint.page_cost)}/{paint.published} lines "
                       f"at {args.rate:g}/s; steal {steal:.0%}; browser clock - ours {paint.clock_offset_ms:+.2f} ms")
            out.append(figure_line("publish -> frame (WebSocket)", paint.to_frame))
            out.append(figure_line("publish -> painted", paint.to_painted))
            out.append(figure_line("painted - frame (the page)", paint.page_cost))
            p99 = percentiles(paint.page_cost)[2]
            met = "met" if p99 <= TARGET_PAINT_P99_MS and len(paint.page_cost) == paint.published else "MISSED"
            out.append(f"  target p99(painted - frame) <= {TARGET_PAINT_P99_MS:.0f} ms, every line painted: {met}")
            if paint.console_errors:
                out.append(f"  console errors: {paint.console_errors[:5]}")
            history = await bench_history(context, stack, live_id, args.lines, args.history_visits)
            out.append(f"Opening the build page with {args.lines}+ lines in its history "
                       f"({args.history_visits} visits):")
            out.append(figure_line("navigation start -> history shown", history))
            paths = [("/dashboard", "/dashboard"), ("/dashboard/new", "/dashboard/new"),
                     ("/dashboard/builds/{id}", f"/dashboard/builds/{live_id}"),
                     ("/dashboard/servers/{id}", f"/dashboard/servers/{server_id}"),
                     ("/dashboard/usage", "/dashboard/usage"), ("/dashboard/org", "/dashboard/org"),
                     ("/sign-in (signed out)", SIGN_IN)]
            out += await asyncio.to_thread(ttfb_httpx, stack.url, paths, cookie, args.requests)
            out += await ttfb_browser(browser, context, stack.url, paths, args.visits)
        finally:
            await browser.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500, help="log lines published onto the build")
    parser.add_argument("--rate", type=float, default=50.0, help="log lines per second")
    parser.add_argument("--requests", type=int, default=200, help="httpx requests per page")
    parser.add_argument("--visits", type=int, default=30, help="browser navigations per page")
    parser.add_argument("--history-visits", type=int, default=10,
                        help="openings of the build page once its history holds the published lines")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"no chromium at {CHROMIUM}: apt-get install chromium (or set BMMS_BENCH_CHROMIUM)", file=sys.stderr)
        return 2
    print(f"start: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bmms-bench-") as root, silent_model() as model_url:
        stack = start_stack(Path(root), {"BMMS_LLM_PROVIDER": "openai", "BMMS_LLM_BASE_URL": model_url,
                                         "BMMS_LLM_MODEL": "bench", "BMMS_LLM_TIMEOUT": "600"})
        try:
            lines = asyncio.run(run(stack, args))
        finally:
            stack.process.send_signal(signal.SIGINT)
            try:
                stack.process.wait(60)
            except Exception:
                stack.process.kill()
    print("\n".join(lines))
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
