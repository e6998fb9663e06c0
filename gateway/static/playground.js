/* The playground (gateway/dashboard_playground.py): list a server's tools and call one, as an MCP client does.

   1. A token: POST .../playground/token gives an OAuth access token of the signed-in person for this server
      (the platform's first-party client, code + PKCE, at the Authorization Server). It lives in `session` below,
      in this page's memory only (never localStorage or a cookie), and is asked for again when it expires.
   2. MCP over streamable HTTP to the server's public URL, JSON-RPC: `initialize` (2025-11-25), the
      `notifications/initialized` notice, `tools/list`, then `tools/call` with the form's arguments. A reply may
      come as JSON or as a one-shot event stream; both are read.
   3. The form is generated from the tool's input schema: strings, numbers, integers, booleans, enums (a
      select), arrays and objects (JSON in a textarea); required fields are marked. */
"use strict";

(() => {
  const PROTOCOL = "2025-11-25";
  const { api, el, showError } = window.BMMS;
  const root = document.getElementById("playground");
  const serverId = root.dataset.serverId;
  const status = document.getElementById("playground-status");
  let session = null;  // {token, url, expiresAt, sessionId}
  let nextId = 1;
  let tools = [];
  let chosen = null;

  async function token() {
    const issued = await api("POST", `/dashboard/servers/${encodeURIComponent(serverId)}/playground/token`);
    return { token: issued.access_token, url: issued.url, expiresAt: Date.now() + (issued.expires_in - 30) * 1000,
             sessionId: null };
  }

  /** One JSON-RPC message to the server; the reply's message (null for a notification). */
  async function rpc(message) {
    const headers = {
      "Authorization": `Bearer ${session.token}`,
      "Content-Type": "application/json",
      "Accept": "application/json, text/event-stream",
      "MCP-Protocol-Version": PROTOCOL,
    };
    if (session.sessionId) headers["Mcp-Session-Id"] = session.sessionId;
    let response;
    try {
      response = await fetch(session.url, { method: "POST", headers, body: JSON.stringify(message),
                                            credentials: "omit", cache: "no-store" });
    } catch (_) {
      throw new Error("The server did not answer; is it running?");
    }
    const sessionId = response.headers.get("Mcp-Session-Id");
    if (sessionId) session.sessionId = sessionId;
    const text = await response.text();
    if (!response.ok && response.status !== 202) {
      let detail = text;
      try { const data = JSON.parse(text); detail = data.detail || data.error_description || (data.error && data.error.message) || text; } catch (_) { /* plain text */ }
      throw new Error(`The server answered HTTP ${response.status}: ${detail || response.statusText}`);
    }
    if (!("id" in message)) return null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("text/event-stream")) {
      for (const block of text.split(/\r?\n\r?\n/)) {
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        const parsed = JSON.parse(data);
        if (parsed.id === message.id) return parsed;
      }
      throw new Error("The server's event stream held no answer to the request.");
    }
    return JSON.parse(text);
  }

  async function connect() {
    session = await token();
    const init = await rpc({ jsonrpc: "2.0", id: nextId++, method: "initialize", params: {
      protocolVersion: PROTOCOL, capabilities: {}, clientInfo: { name: "bmms-dashboard-playground", version: "1" } } });
    if (init.error) throw new Error(`initialize failed: ${init.error.message}`);
    await rpc({ jsonrpc: "2.0", method: "notifications/initialized" });
  }

  async function ensureSession() {
    if (!session || Date.now() > session.expiresAt) await connect();
  }

  function fieldId(name) { return `arg-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`; }

  function typeOf(schema) {
    const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
    if (Array.isArray(schema.enum)) return "enum";
    return type || (schema.properties ? "object" : "string");
  }

  /** One labelled control for a property of the input schema. */
  function field(name, schema, required) {
    const id = fieldId(name);
    const type = typeOf(schema);
    const label = el("label", { for: id }, name, required ? el("span", { class: "required" }, " (required)") : null);
    let control;
    if (type === "enum") {
      control = el("select", { id, name, required });
      if (!required) control.append(el("option", { value: "" }, "(none)"));
      for (const value of schema.enum) control.append(el("option", { value: JSON.stringify(value) }, String(value)));
    } else if (type === "boolean") {
      control = el("select", { id, name, required });
      if (!required) control.append(el("option", { value: "" }, "(none)"));
      control.append(el("option", { value: "true" }, "true"), el("option", { value: "false" }, "false"));
    } else if (type === "integer" || type === "number") {
      control = el("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", required,
                              inputmode: type === "integer" ? "numeric" : "decimal" });
    } else if (type === "array" || type === "object") {
      control = el("textarea", { id, name, class: "code", rows: "3", required,
                                 placeholder: type === "array" ? "[ ]" : "{ }", spellcheck: "false" });
    } else {
      control = el("input", { id, name, type: "text", required, autocomplete: "off" });
    }
    control.dataset.kind = type;
    if (schema.default !== undefined && type !== "enum" && type !== "boolean") {
      control.value = typeof schema.default === "string" ? schema.default : JSON.stringify(schema.default);
    }
    const hint = [schema.description, type === "array" || type === "object" ? `JSON ${type}` : type]
      .filter(Boolean).join(" · ");
    return el("div", { class: "field" }, label, control, el("small", { class: "hint" }, hint));
  }

  function showTool(tool) {
    chosen = tool;
    document.getElementById("call-section").hidden = false;
    document.getElementById("call-tool").textContent = tool.name;
    document.getElementById("call-description").textContent = tool.description || "";
    const schema = tool.inputSchema || {};
    const required = new Set(schema.required || []);
    const fields = document.getElementById("call-fields");
    fields.replaceChildren(...Object.entries(schema.properties || {}).map(([name, prop]) => field(name, prop || {}, required.has(name))));
    if (!fields.children.length) fields.append(el("p", { class: "hint" }, "This tool takes no arguments."));
    showError("call-error", null);
    for (const button of document.querySelectorAll("#tools button")) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === tool.name));
    }
  }

  /** The form's values as the tool's arguments; throws naming the field that is missing or not valid. */
  function argumentsOf() {
    const args = {};
    for (const control of document.querySelectorAll("#call-fields [name]")) {
      const raw = control.value.trim();
      if (raw === "") {
        if (control.required) throw new Error(`${control.name} is required.`);
        continue;
      }
      const kind = control.dataset.kind;
      if (kind === "integer" || kind === "number") {
        const number = Number(raw);
        if (!Number.isFinite(number) || (kind === "integer" && !Number.isInteger(number))) {
          throw new Error(`${control.name} must be ${kind === "integer" ? "a whole number" : "a number"}.`);
        }
        args[control.name] = number;
      } else if (kind === "boolean") {
        args[control.name] = raw === "true";
      } else if (kind === "enum" || kind === "array" || kind === "object") {
        try { args[control.name] = JSON.parse(raw); } catch (_) { throw new Error(`${control.name} must be valid JSON.`); }
      } else {
        args[control.name] = control.value;
      }
    }
    return args;
  }

  function showResult(request, response) {
    document.getElementById("exchange").hidden = false;
    document.getElementById("rpc-request").textContent = JSON.stringify(request, null, 2);
    document.getElementById("rpc-response").textContent = JSON.stringify(response, null, 2);
    const state = document.getElementById("result-state");
    const content = document.getElementById("result-content");
    const structured = document.getElementById("result-structured");
    if (response.error) {
      state.replaceChildren(window.BMMS.badge("failed"));
      content.replaceChildren(el("p", { class: "error" }, `JSON-RPC error ${response.error.code}: ${response.error.message}`));
      structured.textContent = "(none)";
      return;
    }
    const result = response.result || {};
    state.replaceChildren(result.isError ? el("span", { class: "badge failed" }, "isError: true")
                                         : el("span", { class: "badge ok" }, "isError: false"));
    content.replaceChildren(...(result.content || []).map((item) => item.type === "text"
      ? el("pre", { class: "result-text", tabindex: "0" }, item.text)
      : el("pre", { tabindex: "0" }, JSON.stringify(item, null, 2))));
    if (!content.children.length) content.append(el("p", { class: "hint" }, "No content."));
    structured.textContent = result.structuredContent === undefined ? "(none)" : JSON.stringify(result.structuredContent, null, 2);
  }

  async function call(event) {
    event.preventDefault();
    if (!chosen) return;
    showError("call-error", null);
    let args;
    try { args = argumentsOf(); } catch (error) { showError("call-error", error); return; }
    const button = document.getElementById("call-button");
    button.disabled = true;
    try {
      await ensureSession();
      const request = { jsonrpc: "2.0", id: nextId++, method: "tools/call", params: { name: chosen.name, arguments: args } };
      showResult(request, await rpc(request));
    } catch (error) {
      showError("call-error", error);
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    try {
      await connect();
      const listed = await rpc({ jsonrpc: "2.0", id: nextId++, method: "tools/list", params: {} });
      if (listed.error) throw new Error(`tools/list failed: ${listed.error.message}`);
      tools = (listed.result && listed.result.tools) || [];
      const list = document.getElementById("tools");
      if (!tools.length) {
        list.replaceChildren(el("p", { class: "empty" }, "This server serves no tools."));
      } else {
        list.replaceChildren(el("ul", { class: "tool-list" }, ...tools.map((tool) => el("li", {},
          el("button", { type: "button", class: "secondary", "data-tool": tool.name, "aria-pressed": "false",
                         onclick: () => showTool(tool) }, tool.name),
          el("span", { class: "hint" }, ` ${tool.description || ""}`)))));
        showTool(tools[0]);
      }
      status.textContent = `Connected to ${session.url} · ${tools.length} tool${tools.length === 1 ? "" : "s"}`;
    } catch (error) {
      status.textContent = "";
      showError("playground-error", error);
    }
  }

  document.getElementById("call-form").addEventListener("submit", call);
  start();
})();
