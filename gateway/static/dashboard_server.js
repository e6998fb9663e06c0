/* The server page: state and lifecycle (stop, start, delete: each confirmed first), versions with their tool
   changes and rollback, secrets (missing ones marked; set, rotate, delete), the runner's logs. Everything through
   the JSON API (/v1/servers/{id}...); the Connect section is rendered by the gateway. */
"use strict";

(() => {
  const { api, el, badge, formatTime, showError, confirm, toast } = BMMS;
  const root = document.getElementById("server");
  const serverId = root.dataset.serverId;
  const name = root.dataset.name;
  const base = `/v1/servers/${encodeURIComponent(serverId)}`;
  const $ = (id) => document.getElementById(id);

  function diffList(changes) {
    if (!changes) return el("p", { class: "hint" }, "Tool changes not known");
    const items = [];
    if (changes.since === null || changes.since === undefined) {
      items.push(el("li", { class: "added" }, `First version: ${changes.added.length} tools`));
    } else {
      changes.added.forEach((tool) => items.push(el("li", { class: "added" }, `+ ${tool} added`)));
      changes.removed.forEach((tool) => items.push(el("li", { class: "removed" }, `− ${tool} removed `,
        badge("breaking"))));
      changes.changed.forEach((change) => items.push(el("li", { class: "changed" },
        `~ ${change.name}: ${change.parts.join(", ")} changed `,
        change.breaking.length ? badge("breaking") : null,
        ...change.breaking.map((why) => el("div", { class: "removed" }, why)),
        ...change.notes.map((note) => el("div", { class: "hint" }, note)))));
      if (!items.length) items.push(el("li", { class: "hint" }, `No tool changes since version ${changes.since}`));
    }
    return el("ul", { class: "diff" }, items);
  }

  function renderServer(server) {
    const state = $("server-state");
    state.textContent = server.state;
    state.className = `badge ${server.state}`;
    $("server-version").textContent = server.version === null ? "" : `version ${server.version}`;
    $("server-detail").textContent = server.detail || "";
    $("stop-server").hidden = server.state !== "running";
    $("start-server").hidden = server.state !== "stopped" && server.state !== "failed";
    const versions = [...server.versions].sort((a, b) => b.version - a.version);
    if (!versions.length) {
      $("versions").replaceChildren(el("p", { class: "hint" }, "No version deployed yet."));
      return;
    }
    const rows = versions.map((version) => el("tr", { "data-version": version.version },
      el("td", {}, `v${version.version}`, el("div", { class: "hint" }, formatTime(version.created_at)),
         el("div", {}, el("a", { href: `/dashboard/builds/${encodeURIComponent(version.build_id)}` }, "build log"))),
      el("td", {}, version.tool_count === null || version.tool_count === undefined ? "–" : String(version.tool_count)),
      el("td", {}, version.tool_changes && version.tool_changes.breaking ? badge("breaking") : null,
         diffList(version.tool_changes)),
      el("td", {}, version.version === server.version
        ? badge("current", "ok")
        : el("button", { type: "button", class: "secondary small", "aria-label": `Roll back to version ${version.version}`,
                         onclick: () => rollback(version.version) }, "Roll back"))));
    const head = el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Version"), el("th", { scope: "col" }, "Tools"),
                                    el("th", { scope: "col" }, "Changes"), el("th", { scope: "col" }, "Serving")));
    $("versions").replaceChildren(el("div", { class: "table-wrap" }, el("table", {}, head, el("tbody", {}, rows))));
  }

  async function loadServer() {
    try {
      renderServer(await api("GET", base));
    } catch (error) {
      showError("server-error", error);
    }
  }

  async function act(title, text, label, action) {
    if (title && !(await confirm(title, text, label))) return;
    showError("server-error", null);
    try {
      const server = await action();
      if (server) renderServer(server);
    } catch (error) {
      showError("server-error", error);
    }
  }

  function rollback(version) {
    return act(`Roll back to version ${version}?`,
      `${name} will serve version ${version} again at the same URL; clients keep their configuration.`,
      `Roll back to v${version}`, async () => {
        const server = await api("POST", `${base}/rollback`, { version });
        toast(`Now serving version ${version}`);
        loadSecrets();
        return server;
      });
  }

  async function loadSecrets() {
    let listed;
    try {
      listed = await api("GET", `${base}/secrets`);
    } catch (error) {
      $("secrets").replaceChildren(el("p", { class: "error" }, error.message));
      return;
    }
    const set = new Map(listed.secrets.map((secret) => [secret.name, secret]));
    const names = [...new Set([...listed.needed, ...set.keys()])].sort();
    $("secret-names").replaceChildren(...listed.needed.map((n) => el("option", { value: n })));
    if (!names.length) {
      $("secrets").replaceChildren(el("p", { class: "hint" }, "This version needs no secrets, and none are set."));
      return;
    }
    $("secrets").replaceChildren(el("ul", { class: "diff", id: "secret-list" }, names.map((secretName) => {
      const secret = set.get(secretName);
      const missing = listed.missing.includes(secretName);
      return el("li", { "data-secret": secretName, class: "spread" },
        el("span", {}, el("code", {}, secretName), " ",
           missing ? badge("missing") : secret ? badge("set", "ok") : null,
           listed.needed.includes(secretName) ? "" : el("span", { class: "hint" }, " (not used by this version)"),
           secret ? el("div", { class: "hint" }, `Set ${formatTime(secret.updated_at)} by ${secret.updated_by}`) : null),
        el("span", { class: "row" },
          el("button", { type: "button", class: "secondary small", "aria-label": `${secret ? "Rotate" : "Set"} ${secretName}`,
                         onclick: () => { $("secret-name").value = secretName; $("secret-value").focus(); } },
             secret ? "Rotate" : "Set"),
          secret ? el("button", { type: "button", class: "secondary small", "aria-label": `Delete ${secretName}`,
                                  onclick: () => deleteSecret(secretName) }, "Delete") : null));
    })));
  }

  async function deleteSecret(secretName) {
    if (!(await confirm(`Delete ${secretName}?`,
      "The server restarts without it; tools that need it answer an error until it is set again.", "Delete secret"))) {
      return;
    }
    try {
      await api("DELETE", `${base}/secrets/${encodeURIComponent(secretName)}`);
      toast(`${secretName} deleted`);
    } catch (error) {
      showError("secret-error", error);
    }
    loadSecrets();
  }

  async function saveSecret(event) {
    event.preventDefault();
    showError("secret-error", null);
    const secretName = $("secret-name").value.trim();
    const value = $("secret-value").value;
    if (!/^[A-Z][A-Z0-9_]{0,63}$/.test(secretName)) {
      showError("secret-error", new Error("A secret name is upper-snake-case: A-Z, 0-9 and _, starting with a letter."));
      return;
    }
    if (!value) {
      showError("secret-error", new Error("Give the secret's value."));
      return;
    }
    const button = $("secret-save");
    button.disabled = true;
    try {
      await api("PUT", `${base}/secrets/${encodeURIComponent(secretName)}`, { value });
      $("secret-value").value = "";
      $("secret-name").value = "";
      toast(`${secretName} saved`);
      await loadSecrets();
    } catch (error) {
      showError("secret-error", error);
    } finally {
      button.disabled = false;
    }
  }

  /** A runner's JSON log line as one readable line (time, level, message, the request's outline); other lines as
      they are. */
  function readableLine(line) {
    let entry;
    try { entry = JSON.parse(line); } catch (_) { return line; }
    if (!entry || typeof entry !== "object" || !entry.msg) return line;
    const time = typeof entry.ts === "string" ? entry.ts.replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
    const extra = [entry.mcp_method, entry.tool, entry.status, entry.duration_ms !== undefined ? `${entry.duration_ms} ms` : ""]
      .filter((part) => part !== undefined && part !== "").join(" ");
    return `${time} ${String(entry.level || "").toUpperCase()} ${entry.msg}${extra ? ` (${extra})` : ""}`;
  }

  async function loadLogs() {
    try {
      const logs = await api("GET", `${base}/logs?tail=200`);
      $("logs").textContent = logs.lines.length ? logs.lines.map(readableLine).join("\n") : "No log lines yet.";
    } catch (error) {
      $("logs").textContent = error.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("stop-server").addEventListener("click", () => act(`Stop ${name}?`,
      "Its URL answers 503 until you start it again; its versions, secrets and URL are kept.", "Stop",
      () => api("POST", `${base}/stop`)));
    $("start-server").addEventListener("click", () => act(null, "", "", () => api("POST", `${base}/start`)));
    $("delete-server").addEventListener("click", () => act(`Delete ${name}?`,
      "The server, its versions and its secrets are removed, and its URL stops answering. This cannot be undone.",
      "Delete server", async () => {
        await api("DELETE", base);
        window.location.assign("/dashboard");
        return null;
      }));
    $("secret-form").addEventListener("submit", saveSecret);
    $("refresh-logs").addEventListener("click", loadLogs);
    loadServer();
    loadSecrets();
    loadLogs();
  });
})();
