// Devices -> Pending: enrollments waiting for an admin (tokens that require approval).

import { call, listAll } from "../api.js";
import { announce, confirmAction, emptyState, h, pageHeader, spinner, table, when } from "../ui.js";
import { report, setTitle } from "./common.js";

const PAGE_SIZE = 100;

export async function render(main) {
  setTitle("Pending");
  const list = h("section", { class: "panel", "aria-label": "Pending enrollments" });
  const more = h("div", { class: "more" });
  const labels = new Map();
  let pageToken = "";
  const rows = [];

  main.replaceChildren(
    pageHeader({
      crumbs: [["Devices", "/devices"]],
      title: "Pending",
      intro: "Machines waiting to enroll with a token that requires approval. Approving one "
        + "enrolls it (a use of its token); its agent receives its certificate on its next try. "
        + "Denying one stops its agent.",
    }),
    list,
    more);

  try {
    for (const token of await listAll("ListEnrollmentTokens", {}, "tokens")) labels.set(token.id, token.label);
  } catch (error) {
    report(list, error, () => render(main));
    return;
  }

  async function load(append) {
    if (!append) {
      pageToken = "";
      rows.length = 0;
      list.replaceChildren(spinner());
    }
    more.replaceChildren();
    let answer;
    try {
      answer = await call("ListEnrollmentRequests", {
        pageSize: PAGE_SIZE, pageToken, state: "ENROLLMENT_REQUEST_STATE_PENDING",
      });
    } catch (error) {
      report(list, error, () => load(false));
      return;
    }
    rows.push(...(answer.requests ?? []));
    pageToken = answer.nextPageToken ?? "";
    if (!rows.length) {
      list.replaceChildren(emptyState({
        title: "No enrollments are waiting",
        text: "An agent enrolling with a token that requires approval appears here until you decide.",
      }));
      return;
    }
    list.replaceChildren(table({
      caption: "Pending enrollments, newest first",
      columns: [
        {
          title: "Hostname",
          class: "col-main",
          cell: (r) => h("div", {}, h("div", { class: "strong" }, r.hostname || "—"), h("div", { class: "mono small muted" }, r.id)),
        },
        { title: "Token", cell: (r) => h("span", { class: "nowrap", title: r.tokenId }, labels.get(r.tokenId) ?? r.tokenId) },
        { title: "Requested", cell: (r) => when(r.requestedAt) },
        { title: "From", cell: (r) => h("span", { class: "mono" }, r.peer || "—") },
        {
          title: "Facts",
          cell: (r) => h("span", { class: "small" },
            Object.entries(r.facts ?? {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—"),
        },
        { title: "Key", cell: (r) => h("span", { class: "mono small", title: r.publicKeySha256 }, `${r.publicKeySha256.slice(0, 12)}…`) },
        {
          title: "Actions",
          class: "actions",
          cell: (r) => h("span", { class: "nowrap" },
            h("button", { type: "button", class: "button", onclick: () => approve(r) }, "Approve"),
            " ",
            h("button", { type: "button", class: "button button-danger-quiet", onclick: () => deny(r) }, "Deny")),
        },
      ],
      rows: rows.map((request) => ({ item: request, props: { "data-request-id": request.id } })),
    }));
    if (pageToken) {
      more.replaceChildren(h("button", { type: "button", class: "button button-quiet", onclick: () => load(true) },
        "Show more requests"));
    }
  }

  async function approve(request) {
    let answer;
    try {
      answer = await call("ApproveEnrollmentRequest", { id: request.id });
    } catch (error) {
      report(list, error, () => load(false));
      return;
    }
    announce(`Approved ${request.hostname || request.id}: device ${answer.device.id} enrolled`);
    await load(false);
  }

  async function deny(request) {
    const sure = await confirmAction({
      title: `Deny ${request.hostname || request.id}?`,
      text: "Its agent stops with “enrollment denied”. This key cannot ask again; the machine "
        + "would have to enroll anew.",
      confirm: "Deny",
    });
    if (!sure) return;
    try {
      await call("DenyEnrollmentRequest", { id: request.id });
    } catch (error) {
      report(list, error, () => load(false));
      return;
    }
    announce(`Denied ${request.hostname || request.id}`);
    await load(false);
  }

  await load(false);
}
