/* The build page: the build's events live from its WebSocket (/v1/builds/{id}/stream), as a step bar with
   durations, readable log lines and, at the end, the server's URL and what to do next (or why it failed).

   Each frame is {seq, subject, kind, event}. The page remembers the last `seq` it showed and, when the socket
   drops before the build has finished, reconnects with `?after=<seq>`: the stream then sends exactly the events
   after it, so no line is missed or shown twice (a frame at or below the last seq is ignored all the same).
   `window.bmmsBuild` exposes the socket and the last seq (the browser tests drop the connection through it). */
"use strict";

(() => {
  const { el, formatDuration, formatTime } = BMMS;
  const root = document.getElementById("build");
  const buildId = root.dataset.buildId;
  const log = document.getElementById("log");
  const statusBadge = document.getElementById("build-status");
  const connection = document.getElementById("connection");
  const STEPS = ["plan", "generate", "check", "deploy"];
  const STEP_NAMES = { plan: "Plan", generate: "Generate", check: "Check", deploy: "Deploy" };
  const started = {};
  const state = { socket: null, lastSeq: 0, finished: null, retries: 0, closedByPage: false };
  window.bmmsBuild = state;

  function setStatus(status) {
    statusBadge.textContent = status;
    statusBadge.className = `badge ${status}`;
  }

  function stepItem(step) {
    return root.querySelector(`.steps li[data-step="${step}"]`);
  }

  function setStep(step, cls, text) {
    const item = stepItem(step);
    if (!item) return;
    item.classList.remove("active", "done", "failed");
    if (cls) item.classList.add(cls);
    item.querySelector(".state").textContent = text;
  }

  // One formatter for every line: `toLocaleTimeString` with options builds a new one per call, which was most of
  // addLine's own time while a long history replays (~0.2 ms a line; measured with ops/bench/bench_dashboard.py).
  const clock = new Intl.DateTimeFormat([], { hour: "numeric", minute: "numeric", second: "numeric", hour12: false });

  function addLine(seq, at, step, text, level) {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(el("li", { class: level || "info", "data-seq": seq },
      el("span", { class: "time" }, at ? clock.format(new Date(at)) : ""),
      el("span", { class: "step" }, step || ""),
      el("span", { class: "text" }, text)));
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function describeSource(source) {
    if (!source) return "";
    if (source.kind === "openapi") {
      const picked = [...(source.operations || []), ...(source.tags || []).map((t) => `tag ${t}`)];
      return `an OpenAPI document${source.url ? ` (${source.url})` : ""}` +
        (picked.length ? `, only ${picked.join(", ")}` : "");
    }
    if (source.kind === "tool_spec") return `a tool spec (${(source.tools || []).length} tools)`;
    if (source.kind === "plain_words") return "a description in plain words";
    return source.kind;
  }

  function showDeployed(event) {
    const outcome = document.getElementById("outcome");
    const serverPage = `/dashboard/servers/${encodeURIComponent(event.server_id)}`;
    const changes = event.tool_changes;
    const breaking = changes && changes.breaking;
    outcome.replaceChildren(el("div", { class: "card done-box" },
      el("h2", {}, `Deployed: version ${event.version} is live`),
      el("p", {}, "Your server's MCP URL (it stays the same across versions):"),
      el("div", { class: "row" }, el("code", { class: "url", id: "server-url" }, event.url),
        el("button", { type: "button", class: "secondary small", "data-copy-from": "server-url",
                       "aria-label": "Copy the server URL" }, "Copy")),
      breaking ? el("p", { class: "error" }, "This version changes tools in ways that may break existing clients; " +
                    "see the server page for the tool changes.") : null,
      el("h3", {}, "What next"),
      el("ul", {},
        el("li", {}, el("a", { href: `${serverPage}#connect` }, "Connect it to Claude, ChatGPT, Cursor or VS Code")),
        el("li", {}, el("a", { href: `${serverPage}/playground` }, "Try its tools in the playground")),
        el("li", {}, el("a", { href: serverPage }, "Open the server page"), " (versions, secrets, logs)"))));
    outcome.hidden = false;
  }

  function showFailed(event) {
    const outcome = document.getElementById("outcome");
    outcome.replaceChildren(el("div", { class: "card failure-box", role: "alert" },
      el("h2", {}, `The build failed at the ${STEP_NAMES[event.step] || event.step} step`),
      el("p", {}, event.detail),
      el("p", { class: "hint" }, `Reason code: ${event.code}. `, el("a", { href: "/dashboard/new" }, "Start a new build"))));
    outcome.hidden = false;
  }

  /** Applies one event frame to the page; frames at or below the last seq seen are skipped. */
  function apply(frame) {
    if (typeof frame.seq !== "number" || frame.seq <= state.lastSeq) return;
    state.lastSeq = frame.seq;
    const event = frame.event || {};
    switch (frame.kind) {
      case "requested":
        setStatus("building");
        if (event.name) document.getElementById("build-title").textContent = `Build of ${event.name}`;
        addLine(frame.seq, event.at, "", `Build requested from ${describeSource(event.source)}` +
                (event.server_id ? ` as a new version of ${event.server_id}` : ""));
        break;
      case "step": {
        const index = STEPS.indexOf(event.step);
        if (event.state === "started") {
          started[event.step] = event.at;
          STEPS.slice(0, Math.max(0, index)).forEach((s) => {
            if (!stepItem(s).classList.contains("done")) setStep(s, "done", "done");
          });
          setStep(event.step, "active", "running…");
        } else {
          const ms = started[event.step] ? Date.parse(event.at) - Date.parse(started[event.step]) : null;
          setStep(event.step, "done", ms === null ? "done" : `done in ${formatDuration(ms)}`);
        }
        break;
      }
      case "log":
        addLine(frame.seq, event.at, event.step, event.message,
                event.level === "warning" ? "warning" : event.level === "error" ? "failure" : "info");
        break;
      case "planned":
        setStatus("planned");
        addLine(frame.seq, event.at, "plan", `Planned ${event.tool_count} tool${event.tool_count === 1 ? "" : "s"}`,
                "success");
        break;
      case "generated":
        setStatus("generated");
        addLine(frame.seq, event.at, "generate", "Generated the server's code", "success");
        break;
      case "checked":
        setStatus("checked");
        addLine(frame.seq, event.at, "check", "All checks passed", "success");
        break;
      case "deployed":
        state.finished = "deployed";
        setStatus("deployed");
        STEPS.forEach((s) => { if (!stepItem(s).classList.contains("done")) setStep(s, "done", "done"); });
        addLine(frame.seq, event.at, "deploy", `Deployed version ${event.version} at ${event.url}`, "success");
        showDeployed(event);
        break;
      case "failed":
        state.finished = "failed";
        setStatus("failed");
        setStep(event.step, "failed", "failed");
        addLine(frame.seq, event.at, event.step, `Failed: ${event.detail}`, "failure");
        showFailed(event);
        break;
      default:
        break;
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${window.location.host}/v1/builds/${encodeURIComponent(buildId)}/stream` +
                `?after=${state.lastSeq}` + (BMMS.currentOrg() ? `&org=${encodeURIComponent(BMMS.currentOrg())}` : "");
    const socket = new WebSocket(url);
    state.socket = socket;
    socket.addEventListener("open", () => {
      connection.textContent = "Live";
    });
    socket.addEventListener("message", (message) => {
      state.retries = 0;
      let frame;
      try { frame = JSON.parse(message.data); } catch (_) { return; }
      apply(frame);
    });
    socket.addEventListener("close", (close) => {
      if (state.socket !== socket) return;
      state.socket = null;
      if (state.finished) {
        // The stream ends after `deployed` or `failed` (1000, reason deployed/failed): nothing more to follow.
        connection.textContent = "Finished";
        return;
      }
      if (close.code >= 4400 && close.code < 4500 && close.code !== 4408 && close.code !== 4429) {
        // 4000 + an HTTP status: the build is not there for this person (4404), or they are signed out.
        connection.textContent = "Not connected";
        BMMS.showError("build-error", new Error(close.reason || "This build cannot be shown."));
        if (!state.lastSeq) setStatus("unavailable");
        return;
      }
      // Dropped before the build finished: resume after the last event shown, backing off up to 5 s.
      state.retries += 1;
      const delay = Math.min(5000, 250 * 2 ** Math.min(state.retries - 1, 5));
      connection.textContent = "Reconnecting…";
      setTimeout(connect, delay);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    BMMS.api("GET", `/v1/builds/${encodeURIComponent(buildId)}`).then((build) => {
      document.getElementById("build-title").textContent = `Build of ${build.name}`;
      document.title = `Build of ${build.name} · Build My MCP Server`;
      document.getElementById("build-started").textContent = `Started ${formatTime(build.created_at)}`;
    }).catch((error) => BMMS.showError("build-error", error));
    connect();
  });
})();
