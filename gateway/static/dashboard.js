/* The dashboard's shared helpers (loaded by every dashboard page, before the page's own script).

   How pages change state: they call the gateway's JSON API with `BMMS.api(method, path, body)`, a same-origin
   `fetch` that carries the session cookie. The gateway accepts a cookie-authenticated POST/PUT/DELETE only from
   its own origin (gateway/browser.py: browsers send `Origin` on every such fetch, and no other site can forge
   it), with JSON bodies sent as `application/json`; `api` does both. A failed call throws an `ApiError` whose
   message is the problem document's `detail` (RFC 9457), ready to show in words.

   Also here: `el` (build DOM nodes; text is always set as text, never parsed as HTML), copy buttons
   (`data-copy="text"` or `data-copy-from="element id"`), the confirmation dialog (`BMMS.confirm`), a toast,
   dates and durations, and the sign-out button. */
"use strict";

const BMMS = (() => {
  class ApiError extends Error {
    constructor(status, detail, problem) {
      super(detail);
      this.status = status;
      this.problem = problem || {};
    }
  }

  /** The organisation the dashboard acts in (X-Org), when a switcher chose one; else the person's first. */
  function currentOrg() {
    try { return window.localStorage.getItem("bmms.org") || ""; } catch (_) { return ""; }
  }

  /** Calls the gateway's JSON API on this origin; resolves to the parsed JSON (or null), throws ApiError. */
  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const org = currentOrg();
    if (org) headers["X-Org"] = org;
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "The gateway did not answer; check your connection and try again.");
    }
    if (response.status === 401 && !path.startsWith("/v1/auth")) {
      window.location.assign("/sign-in?next=" + encodeURIComponent(window.location.pathname));
      throw new ApiError(401, "Your session has ended; sign in again.");
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!response.ok) {
      const detail = (data && (data.detail || data.title)) || `The request failed (HTTP ${response.status}).`;
      throw new ApiError(response.status, detail, data);
    }
    return data;
  }

  /** A DOM element: el("a", {href: "/x", class: "y"}, "text", otherNode). Strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
      else if (value === true) node.setAttribute(name, "");
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Shows an error (an ApiError or any Error) in words in `target` (an element or its id). */
  function showError(target, error) {
    const node = typeof target === "string" ? document.getElementById(target) : target;
    if (!node) return;
    node.textContent = error ? (error.message || String(error)) : "";
  }

  let toastTimer = null;
  /** A short message at the bottom of the page, read out by screen readers. */
  function toast(message) {
    const node = document.getElementById("toast");
    if (!node) return;
    node.textContent = message;
    node.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => node.classList.remove("show"), 2200);
  }

  /** Copies text to the clipboard (the older `execCommand` way when the Clipboard API is refused). */
  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = el("textarea", { class: "offscreen", "aria-hidden": "true" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    toast("Copied");
  }

  /** Asks before a destructive action; resolves to true when the person confirms. */
  function confirm(title, text, actionLabel) {
    const dialog = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = actionLabel || "Confirm";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  /** "2026-12-07 11:15" in the browser's time zone. */
  function formatTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  /** "850 ms", "4.2 s", "2 min 5 s". */
  function formatDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  /** A status word as a badge. */
  function badge(status, extraClass) {
    return el("span", { class: `badge ${status || ""} ${extraClass || ""}`.trim() }, status || "unknown");
  }

  /** A "Copy" button for `text`, labelled for screen readers with what it copies. */
  function copyButton(text, what) {
    return el("button", { type: "button", class: "secondary small", "data-copy": text,
                          "aria-label": `Copy ${what || "to the clipboard"}` }, "Copy");
  }

  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("[data-copy],[data-copy-from]") : null;
    if (!button) return;
    event.preventDefault();
    const from = button.getAttribute("data-copy-from");
    const text = from ? (document.getElementById(from) || {}).textContent || "" : button.getAttribute("data-copy");
    copyText(text);
  });

  document.addEventListener("DOMContentLoaded", () => {
    const signOut = document.getElementById("sign-out");
    if (signOut) {
      signOut.addEventListener("click", async () => {
        try {
          await api("POST", "/v1/auth/sign-out");
        } catch (error) {
          toast(error.message);
          return;
        }
        window.location.assign("/sign-in");
      });
    }
  });

  return { api, ApiError, el, showError, toast, copyText, copyButton, confirm, formatTime, formatDuration, badge,
           currentOrg };
})();
window.BMMS = BMMS;
