// Audit: who did what, to which resource, from where; newest first, a page at a time.

import { call } from "../api.js";
import { emptyState, h, pageHeader, spinner, table, when } from "../ui.js";
import { report, setTitle } from "./common.js";

const PAGE_SIZE = 50;

export async function render(main) {
  setTitle("Audit");
  let pageToken = "";
  const rows = [];
  const list = h("section", { class: "panel", "aria-label": "Audit events" });
  const more = h("div", { class: "more" });
  main.replaceChildren(
    pageHeader({
      title: "Audit",
      intro: "Every change, by whom and from where: tokens, devices, admins and dashboard sign-ins.",
    }),
    list,
    more);

  async function load() {
    more.replaceChildren();
    if (!rows.length) list.replaceChildren(spinner());
    let answer;
    try {
      answer = await call("ListAuditEvents", { pageSize: PAGE_SIZE, pageToken });
    } catch (error) {
      report(list, error, load);
      return;
    }
    rows.push(...(answer.events ?? []));
    pageToken = answer.nextPageToken ?? "";
    if (!rows.length) {
      list.replaceChildren(emptyState({ title: "No events yet", text: "Changes appear here as they happen." }));
      return;
    }
    list.replaceChildren(table({
      caption: "Audit events, newest first",
      columns: [
        { title: "When", cell: (e) => when(e.at) },
        { title: "Actor", cell: (e) => h("span", { class: "mono" }, e.actor) },
        { title: "Action", cell: (e) => h("span", { class: "action-name" }, e.action) },
        { title: "Resource", cell: (e) => h("span", { class: "mono" }, e.resource) },
        { title: "From", cell: (e) => h("span", { class: "mono" }, e.peer || "—") },
        { title: "Detail", class: "col-detail", cell: (e) => h("span", { class: "small" }, e.detail || "") },
      ],
      rows: rows.map((event) => ({ item: event })),
    }));
    if (pageToken) {
      more.replaceChildren(h("button", { type: "button", class: "button button-quiet", onclick: load }, "Show older events"));
    }
  }

  await load();
}
