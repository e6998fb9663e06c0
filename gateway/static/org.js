/* The organisation page (gateway/dashboard_org.py): members and roles, invitations, API keys and sessions, from
   the /v1 API in the organisation the page acts in (BMMS.api sends X-Org). Owners manage people; members see
   their own keys. Refusals (the last owner, a member's limits) are shown in the API's own words. */
"use strict";

(() => {
  const { api, el, showError, confirm, formatTime, toast } = window.BMMS;
  let me = null;

  /** A table; a header given as ["Name", true] is optional: hidden at a phone's width, like its cells. */
  function table(headers, rows) {
    return el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ...headers.map((h) => Array.isArray(h)
        ? el("th", { scope: "col", class: "optional" }, h[0]) : el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)));
  }

  /** "Chrome on Linux" from a user agent (the whole of it in the cell's title). */
  function browserName(agent) {
    if (!agent) return "unknown";
    const browser = [["Edg/", "Edge"], ["Firefox/", "Firefox"], ["Chrome/", "Chrome"], ["Safari/", "Safari"]]
      .find(([mark]) => agent.includes(mark));
    const system = [["Android", "Android"], ["iPhone", "iOS"], ["Windows", "Windows"], ["Mac OS", "macOS"],
                    ["Linux", "Linux"]].find(([mark]) => agent.includes(mark));
    return browser ? `${browser[1]}${system ? ` on ${system[1]}` : ""}` : agent.slice(0, 40);
  }

  async function guarded(errorId, work) {
    showError(errorId, null);
    try { await work(); } catch (error) { showError(errorId, error); }
  }

  async function loadMembers() {
    const box = document.getElementById("members");
    const listed = await api("GET", "/v1/org/members");
    const owner = me.role === "owner";
    box.replaceChildren(table(["Person", "Role", ["Joined"], ""], listed.members.map((member) => {
      const self = member.person_id === me.person_id;
      const role = owner
        ? el("select", { "aria-label": `Role of ${member.email}`, onchange: (event) => changeRole(member, event.target) },
            ...["owner", "member"].map((r) => el("option", { value: r, selected: r === member.role }, r)))
        : member.role;
      const remove = owner
        ? el("button", { type: "button", class: "danger small", "aria-label": `Remove ${member.email}`,
                         onclick: () => removeMember(member) }, self ? "Leave" : "Remove")
        : "";
      return el("tr", {}, el("td", {}, member.email, self ? el("span", { class: "hint" }, " (you)") : null),
                el("td", {}, role), el("td", { class: "optional" }, formatTime(member.joined_at)), el("td", {}, remove));
    })));
    box.removeAttribute("aria-busy");
  }

  async function changeRole(member, select) {
    await guarded("members-error", async () => {
      try {
        await api("PATCH", `/v1/org/members/${encodeURIComponent(member.person_id)}`, { role: select.value });
        toast(`${member.email} is now ${select.value}`);
      } finally {
        await loadMembers();
      }
    });
  }

  async function removeMember(member) {
    if (!await confirm(`Remove ${member.email}?`, "They lose access to this organisation's servers, and the API keys "
                       + "they created here are revoked.", "Remove")) return;
    await guarded("members-error", async () => {
      await api("DELETE", `/v1/org/members/${encodeURIComponent(member.person_id)}`);
      toast(`${member.email} removed`);
      await loadMembers();
    });
  }

  async function loadInvites() {
    const box = document.getElementById("invites");
    if (me.role !== "owner") {
      document.getElementById("invites-section").hidden = true;
      return;
    }
    const listed = await api("GET", "/v1/org/invites");
    if (!listed.invites.length) {
      box.replaceChildren(el("p", { class: "empty" }, "No pending invitations."));
      return;
    }
    box.replaceChildren(table(["Address", "Role", ["Sent"], ""], listed.invites.map((invite) => el("tr", {},
      el("td", {}, invite.email), el("td", {}, invite.role), el("td", { class: "optional" }, formatTime(invite.created_at)),
      el("td", {}, el("button", { type: "button", class: "secondary small", "aria-label": `Withdraw the invitation of ${invite.email}`,
                                 onclick: () => withdraw(invite) }, "Withdraw"))))));
  }

  async function withdraw(invite) {
    await guarded("invites-error", async () => {
      await api("DELETE", `/v1/org/invites/${encodeURIComponent(invite.invite_id)}`);
      toast("Invitation withdrawn");
      await loadInvites();
    });
  }

  async function invite(event) {
    event.preventDefault();
    const input = document.getElementById("invite-email");
    await guarded("invites-error", async () => {
      await api("POST", "/v1/invites", { email: input.value.trim() });
      toast(`Invitation sent to ${input.value.trim()}`);
      input.value = "";
      await loadInvites();
    });
  }

  async function loadKeys() {
    const box = document.getElementById("keys");
    const listed = await api("GET", "/v1/api-keys");
    if (!listed.keys.length) {
      box.replaceChildren(el("p", { class: "empty" }, "No API keys. Create one to build servers from scripts or CI."));
      return;
    }
    box.replaceChildren(table(["Label", ["Key id"], ["Created"], ""], listed.keys.map((key) => el("tr", {},
      el("td", {}, key.label), el("td", { class: "optional" }, el("code", {}, key.key_id)),
      el("td", { class: "optional" }, formatTime(key.created_at)),
      el("td", {}, el("button", { type: "button", class: "danger small", "aria-label": `Revoke the key ${key.label}`,
                                 onclick: () => revoke(key) }, "Revoke"))))));
  }

  async function createKey(event) {
    event.preventDefault();
    const input = document.getElementById("key-label");
    await guarded("keys-error", async () => {
      const created = await api("POST", "/v1/api-keys", { label: input.value.trim() || "default" });
      document.getElementById("new-key-secret").textContent = created.secret;
      document.getElementById("new-key").hidden = false;
      input.value = "";
      await loadKeys();
    });
  }

  async function revoke(key) {
    if (!await confirm(`Revoke the key "${key.label}"?`, "Anything using it is refused from now on.", "Revoke")) return;
    await guarded("keys-error", async () => {
      await api("DELETE", `/v1/api-keys/${encodeURIComponent(key.key_id)}`);
      document.getElementById("new-key").hidden = true;
      toast(`Key "${key.label}" revoked`);
      await loadKeys();
    });
  }

  async function loadSessions() {
    const box = document.getElementById("sessions");
    const listed = await api("GET", "/v1/sessions");
    box.replaceChildren(table(["Browser", ["From"], "Signed in", ["Expires"], ""], listed.sessions.map((s) => el("tr", {},
      el("td", { title: s.user_agent || "" }, browserName(s.user_agent),
         s.current ? el("span", { class: "hint" }, " (this one)") : null),
      el("td", { class: "optional" }, s.client_ip || ""), el("td", {}, formatTime(s.created_at)),
      el("td", { class: "optional" }, formatTime(s.expires_at)),
      el("td", {}, s.current ? "" : el("button", { type: "button", class: "secondary small",
                                                   "aria-label": `End the session from ${browserName(s.user_agent)} signed in ${formatTime(s.created_at)}`,
                                                   onclick: () => endSession(s) }, "End"))))));
  }

  async function endSession(session) {
    await guarded("sessions-error", async () => {
      await api("DELETE", `/v1/sessions/${encodeURIComponent(session.session_id)}`);
      toast("Session ended");
      await loadSessions();
    });
  }

  async function start() {
    try {
      me = await api("GET", "/v1/me");
    } catch (error) {
      showError("org-error", error);
      return;
    }
    const org = (me.orgs || []).find((o) => o.org_id === me.org_id);
    document.getElementById("org-name").textContent = org ? `${org.name} · you are ${me.role}` : "";
    document.getElementById("invite-form").addEventListener("submit", invite);
    document.getElementById("key-form").addEventListener("submit", createKey);
    await Promise.all([
      guarded("members-error", loadMembers), guarded("invites-error", loadInvites),
      guarded("keys-error", loadKeys), guarded("sessions-error", loadSessions),
    ]);
  }

  start();
})();
