/* The new server page: three ways in (plain words, an OpenAPI document with an operation picker, a tool spec),
   the plan preview (POST /v1/plans) with the live token size of the chosen tools and the plan's flags in words,
   the secrets the plan needs, and POST /v1/builds; then on to the build page. */
"use strict";

(() => {
  const { api, el, showError } = BMMS;
  const EXAMPLE_SPEC = {
    tools: [
      {
        name: "add", description: "Add two integers.",
        parameters: [{ name: "a", type: "integer" }, { name: "b", type: "integer" }],
        implementation: { kind: "function", body: "return a + b" },
      },
      {
        name: "shout", description: "Upper-case a text.",
        parameters: [{ name: "text", type: "string", description: "What to shout" }],
        implementation: { kind: "function", body: "return text.upper()" },
      },
    ],
  };
  const FLAG_WORDS = {
    prompt_injection: "Possible prompt injection in the document",
    skipped_operation: "An operation was left out",
    truncated: "Part of the document was left out",
    offline_demo: "Planned offline (a demo plan)",
    note: "Note",
    token_budget: "Over the token budget",
  };
  const query = new URLSearchParams(window.location.search);
  const newVersionOf = query.get("server_id");  // a new version of this server (same URL), not a new server
  let kind = "openapi";
  let preview = null;          // the last plan preview, for the kind it was made for
  let previewedSource = null;  // the source it was made from (the picker narrows it)

  const $ = (id) => document.getElementById(id);

  function selectTab(next) {
    kind = next;
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const on = tab.id === `tab-${next}`;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $(tab.getAttribute("aria-controls")).hidden = !on;
    }
    clearPreview();
  }

  function clearPreview() {
    preview = null;
    previewedSource = null;
    $("preview").hidden = true;
    $("secrets-box").hidden = true;
    $("secret-fields").replaceChildren();
    showError("preview-error", null);
  }

  /** Tokens of one tool as the estimate counts them (its JSON characters / 4). */
  function toolTokens(tool) {
    return Math.ceil(JSON.stringify(tool).length / 4);
  }

  async function openapiSource() {
    const from = document.querySelector("input[name=openapi-from]:checked").value;
    if (from === "url") {
      const url = $("openapi-url").value.trim();
      if (!url) throw new Error("Give the document's URL.");
      return { kind: "openapi", url };
    }
    let document_ = "";
    if (from === "file") {
      const file = $("openapi-file").files[0];
      if (!file) throw new Error("Choose the OpenAPI document to upload.");
      document_ = await file.text();
    } else {
      document_ = $("openapi-text").value;
    }
    if (!document_.trim()) throw new Error("The OpenAPI document is empty.");
    return { kind: "openapi", document: document_ };
  }

  function toolSpecSource() {
    let parsed;
    try {
      parsed = JSON.parse($("tool-spec").value);
    } catch (error) {
      throw new Error(`The tool spec is not valid JSON: ${error.message}`);
    }
    const tools = Array.isArray(parsed) ? parsed : parsed && parsed.tools;
    if (!Array.isArray(tools) || !tools.length) throw new Error("The tool spec needs a \"tools\" list with at least one tool.");
    return { kind: "tool_spec", tools };
  }

  function serverName() {
    return $("server-name").value.trim();
  }

  function renderPreview(result, pickable) {
    preview = result;
    const picker = $("picker");
    const groups = new Map();
    for (const tool of result.tools) {
      const tag = (tool.tags && tool.tags[0]) || "";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(tool);
    }
    const sets = [];
    for (const [tag, tools] of groups) {
      const set = el("fieldset", {}, el("legend", {}, tag || (pickable ? "Operations" : "Tools")));
      for (const tool of tools) {
        const id = `pick-${tool.name}`;
        const box = el("input", { type: "checkbox", id, value: tool.name, checked: true, disabled: !pickable,
                                  "data-tokens": toolTokens(tool) });
        box.addEventListener("change", updateTotal);
        set.append(el("label", { for: id }, box,
          el("span", {}, el("strong", {}, tool.name), " ", el("small", {}, tool.title || tool.description || "")),
          el("span", { class: "tokens" }, `~${toolTokens(tool)} tokens`)));
      }
      sets.push(set);
    }
    picker.replaceChildren(...sets);
    $("pick-hint").textContent = pickable
      ? "Choose the operations the server should have: each becomes one tool."
      : "The tools the server will have.";
    $("pick-all-row").hidden = !pickable;
    const flags = result.flags || [];
    $("flags").replaceChildren(...flags.map((flag) =>
      el("li", {}, el("strong", {}, `${FLAG_WORDS[flag.kind] || flag.kind}: `), flag.detail)));
    $("flags-box").hidden = !flags.length;
    const secrets = result.secrets || [];
    $("secret-fields").replaceChildren(...secrets.map((secret) => el("div", {},
      el("label", { for: `secret-${secret.name}` }, secret.name),
      el("input", { type: "password", id: `secret-${secret.name}`, "data-secret": secret.name, autocomplete: "off" }),
      el("p", { class: "hint" }, secret.description || ""))));
    $("secrets-box").hidden = !secrets.length;
    $("preview").hidden = false;
    updateTotal();
  }

  function chosenTools() {
    return [...document.querySelectorAll("#picker input[type=checkbox]")].filter((box) => box.checked);
  }

  function updateTotal() {
    const chosen = chosenTools();
    const total = chosen.reduce((sum, box) => sum + Number(box.dataset.tokens), 0);
    const all = document.querySelectorAll("#picker input[type=checkbox]").length;
    $("token-total").textContent =
      `${chosen.length} of ${all} tool${all === 1 ? "" : "s"} chosen: about ${total.toLocaleString()} tokens`;
  }

  async function runPreview(button, sourceOf, pickable) {
    showError("preview-error", null);
    button.disabled = true;
    const label = button.textContent;
    button.textContent = "Planning…";
    try {
      const source = await sourceOf();
      const body = { source };
      if (serverName()) body.name = serverName();
      const result = await api("POST", "/v1/plans", body);
      previewedSource = source;
      renderPreview(result, pickable);
    } catch (error) {
      clearPreview();
      showError("preview-error", error);
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  async function buildSource() {
    if (kind === "plain_words") {
      const text = $("plain-text").value.trim();
      if (!text) throw new Error("Say in a few words what the server should do.");
      return { kind: "plain_words", text };
    }
    if (kind === "tool_spec") return toolSpecSource();
    const source = previewedSource || await openapiSource();
    if (preview) {
      const chosen = chosenTools().map((box) => box.value);
      if (!chosen.length) throw new Error("Choose at least one operation.");
      if (chosen.length < preview.tools.length) return { ...source, operations: chosen };
    }
    return source;
  }

  function secretsGiven() {
    const secrets = {};
    for (const input of document.querySelectorAll("[data-secret]")) {
      if (input.value) secrets[input.dataset.secret] = input.value;
    }
    return Object.keys(secrets).length ? secrets : undefined;
  }

  async function submit(event) {
    event.preventDefault();
    showError("submit-error", null);
    const button = $("build-button");
    try {
      const name = serverName();
      if (!name) {
        $("server-name").focus();
        throw new Error("Give the server a name.");
      }
      const body = { name, source: await buildSource() };
      if (newVersionOf) body.server_id = newVersionOf;
      const secrets = secretsGiven();
      if (secrets) body.secrets = secrets;
      button.disabled = true;
      button.textContent = "Starting the build…";
      const created = await api("POST", "/v1/builds", body);
      window.location.assign(`/dashboard/builds/${encodeURIComponent(created.build_id)}`);
    } catch (error) {
      showError("submit-error", error);
      button.disabled = false;
      button.textContent = newVersionOf ? "Build the new version" : "Build the server";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("tool-spec").value = JSON.stringify(EXAMPLE_SPEC, null, 2);
    const tabs = [...document.querySelectorAll("[role=tab]")];
    for (const tab of tabs) {
      tab.addEventListener("click", () => selectTab(tab.id.slice(4)));
      tab.addEventListener("keydown", (event) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
        if (!step) return;
        const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
        next.focus();
        selectTab(next.id.slice(4));
      });
    }
    for (const radio of document.querySelectorAll("input[name=openapi-from]")) {
      radio.addEventListener("change", () => {
        for (const from of ["file", "paste", "url"]) $(`openapi-${from}-box`).hidden = radio.value !== from;
        clearPreview();
      });
    }
    for (const id of ["openapi-file", "openapi-text", "openapi-url", "tool-spec"]) {
      $(id).addEventListener("change", clearPreview);
    }
    $("preview-openapi").addEventListener("click", (e) => runPreview(e.currentTarget, openapiSource, true));
    $("preview-spec").addEventListener("click", (e) => runPreview(e.currentTarget, async () => toolSpecSource(), false));
    $("pick-all").addEventListener("click", () => { for (const b of document.querySelectorAll("#picker input")) b.checked = true; updateTotal(); });
    $("pick-none").addEventListener("click", () => { for (const b of document.querySelectorAll("#picker input")) b.checked = false; updateTotal(); });
    $("new-server").addEventListener("submit", submit);
    const wanted = query.get("from");
    if (wanted && $(`tab-${wanted}`)) selectTab(wanted);
    if (newVersionOf) {
      document.querySelector("h1").textContent = "New version";
      $("server-name").value = query.get("name") || "";
      const note = $("new-version");
      note.textContent = "It is deployed as the next version of the server, at the same URL; clients keep their " +
                         "configuration, and you can roll back from the server page.";
      note.hidden = false;
      $("build-button").textContent = "Build the new version";
    }
  });
})();
