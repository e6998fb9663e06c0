/* The servers list (the dashboard's home): each server's name, state, URL, current version and calls today
   (GET /v1/servers, and GET /v1/usage once for each server's calls today and the organisation's totals). */
"use strict";

(() => {
  const { api, el, badge, copyButton, showError } = BMMS;

  function emptyState() {
    return el("div", { class: "empty" },
      el("h2", {}, "No servers yet"),
      el("p", {}, "Describe one in plain words, or start from an OpenAPI document or a tool spec; it is built, " +
                  "checked and hosted at its own URL in a minute or so."),
      el("a", { class: "button", href: "/dashboard/new" }, "Create your first server"));
  }

  function table(servers, callsByServer) {
    const rows = servers.map((server) => el("tr", {},
      el("td", {}, el("a", { href: `/dashboard/servers/${encodeURIComponent(server.server_id)}` }, server.name)),
      el("td", {}, badge(server.state)),
      el("td", {}, el("div", { class: "row" }, el("span", { class: "url" }, server.url),
                      copyButton(server.url, `the URL of ${server.name}`))),
      el("td", { class: "optional" }, server.version === null ? "–" : `v${server.version}`),
      el("td", { class: "optional" }, callsByServer === null ? "–" : String(callsByServer.get(server.server_id) || 0))));
    return el("div", { class: "table-wrap" }, el("table", {},
      el("caption", { class: "sr-heading" }, "Your servers"),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Name"), el("th", { scope: "col" }, "Status"), el("th", { scope: "col" }, "URL"),
        el("th", { scope: "col", class: "optional" }, "Version"),
        el("th", { scope: "col", class: "optional" }, "Calls today"))),
      el("tbody", {}, rows)));
  }

  async function load() {
    const box = document.getElementById("servers");
    let listed;
    try {
      listed = await api("GET", "/v1/servers");
    } catch (error) {
      box.replaceChildren();
      showError("servers-error", error);
      return;
    } finally {
      box.removeAttribute("aria-busy");
    }
    let callsByServer = null;
    try {
      const usage = await api("GET", "/v1/usage");
      callsByServer = new Map(usage.by_server.map((s) => [s.server_id, s.calls_today]));
      const today = new Date().toISOString().slice(0, 10);
      const day = usage.by_day.find((d) => d.day.slice(0, 10) === today);
      document.getElementById("usage-summary").textContent =
        `Tool calls today: ${day ? day.calls : 0} · this month: ${usage.tool_calls}`;
    } catch (_) {
      callsByServer = null; // usage is a nicety here; the list stands without it
    }
    box.replaceChildren(listed.servers.length ? table(listed.servers, callsByServer) : emptyState());
  }

  document.addEventListener("DOMContentLoaded", load);
})();
