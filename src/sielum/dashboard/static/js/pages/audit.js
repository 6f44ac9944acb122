// Audit: who did what, to which resource, from where; newest first, a page at a time,
// filtered as `sielum-admin audit list` filters (actor, resource, action, since).

import { emptyState, h, pageHeader, table, utcOffset, when } from "../ui.js";
import { pagedList, setTitle } from "./common.js";

const PAGE_SIZE = 50;
// The actions Sielum records (docs/api.md), offered as suggestions; any text is accepted.
const ACTIONS = [
  "admin.adopt", "admin.certify", "admin.create", "admin.register", "admin.retire", "admin.revoke",
  "dashboard.login", "dashboard.login_link", "dashboard.logout",
  "device.adopt", "device.enroll", "device.expire", "device.renew", "device.revoke", "device.unenroll",
  "request.approve", "request.create", "request.deny",
  "service.create", "service.revoke",
  "token.create", "token.revoke",
];
const FILTERS = ["actor", "resource", "action", "since"];
// A serial or a key hash: long enough that it is no word a person writes.
const HEX = /\b[0-9a-f]{20,}\b/g;

// The filters in the address, so that a filtered view can be linked and reloaded.
function readAddress() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const name of FILTERS) {
    const value = (params.get(name) ?? "").trim();
    if (value) filters[name] = value;
  }
  if (filters.since && Number.isNaN(new Date(filters.since).getTime())) delete filters.since;
  return filters;
}

function writeAddress(filters) {
  const query = new URLSearchParams(filters).toString();
  history.replaceState(null, "", query ? `/audit?${query}` : "/audit");
}

function localInputValue(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`
    + `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

// Detail text with every long hex value (a certificate serial) on one line, cut with an
// ellipsis, whole in its title and when copied.
export function detailText(text) {
  const parts = [];
  let last = 0;
  for (const match of String(text ?? "").matchAll(HEX)) {
    parts.push(text.slice(last, match.index));
    parts.push(h("span", { class: "hex", title: match[0] }, match[0]));
    last = match.index + match[0].length;
  }
  parts.push(String(text ?? "").slice(last));
  return h("span", { class: "small detail-text" }, parts);
}

// An actor or resource as a link to its events alone; it may break after the kind
// ("device/" then the id), never inside the id.
function filterLink(name, value) {
  const text = String(value ?? "");
  const at = text.indexOf("/") + 1;
  return h("a", { class: "mono", href: `/audit?${new URLSearchParams({ [name]: text })}`, title: `Only events with ${name} ${text}` },
    text.slice(0, at), at ? h("wbr", {}) : null, h("span", { class: "nowrap" }, text.slice(at)));
}

function filterField({ name, label, hint, input }) {
  input.setAttribute("id", `audit-${name}`);
  input.setAttribute("name", name);
  if (hint) input.setAttribute("aria-describedby", `audit-${name}-hint`);
  return h("div", { class: "filter" },
    h("label", { for: `audit-${name}` }, label),
    input,
    hint ? h("p", { class: "hint", id: `audit-${name}-hint` }, hint) : null);
}

export async function render(main) {
  setTitle("Audit");
  let filters = readAddress();
  const holder = h("div", {});
  const summary = h("p", { class: "filter-summary", role: "status" });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter audit events" },
    filterField({
      name: "actor",
      label: "Actor",
      hint: "admin/NAME, device/ID, token/ID",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", size: 18, value: filters.actor ?? "" }),
    }),
    filterField({
      name: "resource",
      label: "Resource",
      hint: "e.g. token/ID or device/ID",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", size: 18, value: filters.resource ?? "" }),
    }),
    filterField({
      name: "action",
      label: "Action",
      hint: "e.g. device.revoke",
      input: h("input", { type: "text", autocomplete: "off", spellcheck: "false", size: 16, list: "audit-actions", value: filters.action ?? "" }),
    }),
    h("datalist", { id: "audit-actions" }, ACTIONS.map((action) => h("option", { value: action }))),
    filterField({
      name: "since",
      label: "Since",
      hint: `Your local time (${utcOffset()})`,
      input: h("input", { type: "datetime-local", value: localInputValue(filters.since) }),
    }),
    h("div", { class: "filter filter-buttons" },
      h("div", { class: "copy-row" },
        h("button", { type: "submit", class: "button" }, "Apply filters"),
        h("button", { type: "button", class: "button button-quiet", onclick: () => apply({}) }, "Clear"))));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const name of ["actor", "resource", "action"]) {
      const value = form.querySelector(`#audit-${name}`).value.trim();
      if (value) next[name] = value;
    }
    const since = form.querySelector("#audit-since").value;
    if (since) next.since = new Date(since).toISOString();
    apply(next);
  });

  main.replaceChildren(
    pageHeader({
      title: "Audit",
      intro: "Every change, by whom and from where: tokens, devices, admins, services and dashboard sign-ins.",
    }),
    form,
    summary,
    holder);

  function apply(next) {
    filters = next;
    writeAddress(filters);
    for (const name of ["actor", "resource", "action"]) form.querySelector(`#audit-${name}`).value = filters[name] ?? "";
    form.querySelector("#audit-since").value = localInputValue(filters.since);
    return load();
  }

  function describe() {
    const words = [];
    if (filters.actor) words.push(`by ${filters.actor}`);
    if (filters.action) words.push(`of action ${filters.action}`);
    if (filters.resource) words.push(`about ${filters.resource}`);
    if (filters.since) words.push(`since ${new Date(filters.since).toLocaleString()}`);
    return words.length ? `Showing events ${words.join(", ")}.` : "";
  }

  async function load() {
    summary.textContent = describe();
    // A list of its own for each set of filters: an answer for older filters lands in a
    // list no longer on the page.
    const list = h("section", { class: "panel", "aria-label": "Audit events" });
    const more = h("div", { class: "more" });
    holder.replaceChildren(list, more);
    const filtered = Object.keys(filters).length > 0;
    await pagedList({
      list,
      more,
      method: "ListAuditEvents",
      request: { pageSize: PAGE_SIZE, ...filters },
      field: "events",
      empty: () => (filtered
        ? emptyState({ title: "No events match", text: "No event matches these filters. Clear them to see every event." })
        : emptyState({ title: "No events yet", text: "Changes appear here as they happen." })),
      draw: (rows) => table({
        caption: "Audit events, newest first",
        columns: [
          { title: "When", cell: (e) => when(e.at) },
          { title: "Actor", cell: (e) => filterLink("actor", e.actor) },
          { title: "Action", cell: (e) => h("span", { class: "action-name" }, e.action) },
          { title: "Resource", cell: (e) => filterLink("resource", e.resource) },
          { title: "From", cell: (e) => h("span", { class: "mono nowrap" }, e.peer || "—") },
          { title: "Detail", class: "col-detail", cell: (e) => detailText(e.detail || "") },
        ],
        rows: rows.map((event) => ({ item: event })),
      }),
      moreText: "Show older events",
    })();
  }

  await load();
}
