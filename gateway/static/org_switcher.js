/* The organisation switcher in the dashboard's top bar (gateway/dashboard_org.py), for people in several.

   The choice is kept where both kinds of request find it: localStorage "bmms.org" (BMMS.api sends it as X-Org)
   and the `bmms_org` cookie (server-rendered pages read it). Neither is a credential: the gateway checks each
   request against the person's memberships. An organisation the person has left is forgotten. */
"use strict";

(() => {
  const KEY = "bmms.org";

  function remember(orgId) {
    try {
      if (orgId) window.localStorage.setItem(KEY, orgId); else window.localStorage.removeItem(KEY);
    } catch (_) { /* storage refused: the cookie still says it */ }
    const secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = orgId ? `bmms_org=${encodeURIComponent(orgId)}; Path=/; SameSite=Lax; Max-Age=31536000${secure}`
                            : `bmms_org=; Path=/; SameSite=Lax; Max-Age=0${secure}`;
  }

  async function start() {
    const select = document.getElementById("org-switcher");
    if (!select) return;
    let me;
    try {
      me = await window.BMMS.api("GET", "/v1/me");
    } catch (error) {
      if (error.status === 403 && window.BMMS.currentOrg()) {  // no longer a member of the one remembered
        remember("");
        window.location.reload();
      }
      return;
    }
    // The cookie follows the API's choice, so server-rendered pages show the same organisation.
    if (window.BMMS.currentOrg()) remember(me.org_id);
    const orgs = me.orgs || [];
    if (orgs.length < 2) return;
    select.replaceChildren(...orgs.map((org) => window.BMMS.el("option", { value: org.org_id, selected: org.org_id === me.org_id },
                                                               `${org.name} (${org.role})`)));
    select.closest("[hidden]")?.removeAttribute("hidden");
    select.addEventListener("change", () => {
      remember(select.value);
      window.location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
