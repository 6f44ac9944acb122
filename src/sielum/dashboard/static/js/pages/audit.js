// Audit: who did what, to which resource, from where; newest first, a page at a time.

import { emptyState, h, pageHeader, table, when } from "../ui.js";
import { pagedList, setTitle } from "./common.js";

const PAGE_SIZE = 50;

export async function render(main) {
  setTitle("Audit");
  const list = h("section", { class: "panel", "aria-label": "Audit events" });
  const more = h("div", { class: "more" });
  main.replaceChildren(
    pageHeader({
      title: "Audit",
      intro: "Every change, by whom and from where: tokens, devices, admins, services and dashboard sign-ins.",
    }),
    list,
    more);

  const load = pagedList({
    list,
    more,
    method: "ListAuditEvents",
    request: { pageSize: PAGE_SIZE },
    field: "events",
    empty: () => emptyState({ title: "No events yet", text: "Changes appear here as they happen." }),
    draw: (rows) => table({
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
    }),
    moreText: "Show older events",
  });
  await load();
}
