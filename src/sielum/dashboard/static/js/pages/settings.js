// Settings: the sections an admin configures, and who may call Sielum (admins and services).

import { badge, emptyState, h, pageHeader, stateName, table, when } from "../ui.js";
import { pagedList, setTitle } from "./common.js";

const PAGE_SIZE = 100;

// Admins and services are read here only: making or revoking one needs an admin's own
// certificate (sielum-admin), never a dashboard session.
const IDENTITIES = [
  {
    id: "admins",
    title: "Admins",
    method: "ListAdmins",
    field: "admins",
    prefix: "ADMIN_STATE_",
    intro: () => ["People who manage Sielum, each with a certificate of their own. Add and revoke them with ",
      h("code", {}, "sielum-admin admins"), "."],
    empty: "No admin is registered yet.",
  },
  {
    id: "services",
    title: "Services",
    method: "ListServices",
    field: "services",
    prefix: "SERVICE_STATE_",
    intro: () => ["Other systems that call Sielum with a certificate naming ",
      h("code", {}, "sielum://service/NAME"), ". Add and revoke them with ",
      h("code", {}, "sielum-admin services"), "."],
    empty: "No service has been created. Create one with sielum-admin services create NAME --out DIR.",
  },
];

export async function render(main) {
  setTitle("Settings");
  const sections = IDENTITIES.map((kind) => identitySection(kind));
  main.replaceChildren(
    pageHeader({ title: "Settings", intro: "How machines join, and who may manage them." }),
    h("div", { class: "cards" },
      h("div", { class: "card card-link" },
        h("h2", {}, h("a", { href: "/settings/enrollment-tokens" }, "Enrollment Tokens")),
        h("p", {}, "Create the one-time credentials agents enroll with, see how often each was used, revoke them."))),
    ...sections.map((section) => section.element));
  await Promise.all(sections.map((section) => section.load()));
}

// One read-only list, a page at a time: name, state, created, created by, revoked.
function identitySection(kind) {
  const headingId = `${kind.id}-heading`;
  const list = h("div", { class: "panel" });
  const more = h("div", { class: "more" });
  const element = h("section", { class: "settings-section", "aria-labelledby": headingId },
    h("h2", { id: headingId }, kind.title),
    h("p", { class: "intro" }, kind.intro()),
    list,
    more);
  const load = pagedList({
    list,
    more,
    method: kind.method,
    request: { pageSize: PAGE_SIZE },
    field: kind.field,
    empty: () => emptyState({ title: `No ${kind.title.toLowerCase()}`, text: kind.empty }),
    draw: (rows) => table({
      caption: `${kind.title}, newest first`,
      columns: [
        { title: "Name", cell: (i) => h("span", { class: "mono" }, i.name) },
        { title: "State", cell: (i) => badge(stateName(i.state, kind.prefix)) },
        { title: "Created", cell: (i) => when(i.createdAt) },
        { title: "Created by", cell: (i) => i.createdBy || "—" },
        { title: "Revoked", cell: (i) => when(i.revokedAt) },
      ],
      rows: rows.map((identity) => ({ item: identity })),
    }),
    moreText: `Show more ${kind.title.toLowerCase()}`,
  });
  return { element, load };
}
