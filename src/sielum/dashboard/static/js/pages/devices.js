// Devices: every enrolled machine, filtered by the token it enrolled with or a tag; revoke one.

import { call, listAll } from "../api.js";
import { announce, badge, confirmAction, emptyState, h, pageHeader, spinner, stateName, table, when } from "../ui.js";
import { report, setTitle } from "./common.js";

const PAGE_SIZE = 50;

function deviceState(device) {
  return stateName(device.state, "DEVICE_STATE_");
}

export async function render(main) {
  setTitle("Devices");
  const params = new URLSearchParams(location.search);
  let tokenId = params.get("token") ?? "";
  let tag = params.get("tag") ?? "";
  let pageToken = "";
  const rows = [];
  const labels = new Map();
  const list = h("section", { class: "panel", "aria-label": "Devices" });
  const more = h("div", { class: "more" });
  const filter = h("select", { id: "token-filter" }, h("option", { value: "" }, "All tokens"));
  const tagFilter = h("input", { id: "tag-filter", type: "search", value: tag, autocomplete: "off", size: 16 });
  function address() {
    const query = new URLSearchParams();
    if (tokenId) query.set("token", tokenId);
    if (tag) query.set("tag", tag);
    const text = query.toString();
    history.replaceState(null, "", text ? `/devices?${text}` : "/devices");
  }
  filter.addEventListener("change", () => {
    tokenId = filter.value;
    address();
    load(false);
  });
  tagFilter.addEventListener("change", () => {
    tag = tagFilter.value.trim();
    address();
    load(false);
  });
  const pending = h("a", { class: "button button-quiet", href: "/devices/pending" }, "Pending");

  main.replaceChildren(
    pageHeader({
      title: "Devices",
      intro: "Machines that enrolled with a token. A revoked device is refused from its very next call.",
      actions: [pending],
    }),
    h("div", { class: "toolbar" },
      h("label", { for: "token-filter" }, "Token"), filter,
      h("label", { for: "tag-filter" }, "Tag"), tagFilter),
    list,
    more);

  try {
    const tokens = await listAll("ListEnrollmentTokens", {}, "tokens");
    for (const token of tokens) {
      labels.set(token.id, token.label);
      filter.append(h("option", { value: token.id, selected: token.id === tokenId }, `${token.label} (${token.id})`));
    }
  } catch (error) {
    report(list, error, () => render(main));
    return;
  }
  if (tokenId && !labels.has(tokenId)) {
    filter.append(h("option", { value: tokenId, selected: true }, tokenId));
  }

  // A filter changed while a page was loading: only the latest answer is drawn.
  let generation = 0;

  async function load(append) {
    generation += 1;
    const mine = generation;
    if (!append) {
      pageToken = "";
      rows.length = 0;
      list.replaceChildren(spinner());
    }
    more.replaceChildren();
    let answer;
    try {
      answer = await call("ListDevices", {
        pageSize: PAGE_SIZE, pageToken, tokenId: tokenId || undefined, tag: tag || undefined,
      });
    } catch (error) {
      if (mine === generation) report(list, error, () => load(false));
      return;
    }
    if (mine !== generation) return;
    rows.push(...(answer.devices ?? []));
    pageToken = answer.nextPageToken ?? "";
    if (!rows.length) {
      if (tag) {
        list.replaceChildren(emptyState({
          title: "No devices with this tag",
          text: "No device carries this tag. Tags come from the token a device enrolled with.",
        }));
        return;
      }
      list.replaceChildren(emptyState({
        title: tokenId ? "No devices enrolled with this token" : "No devices yet",
        text: tokenId
          ? "No machine has enrolled with this token so far."
          : "Create an enrollment token under Settings, then run its agent command on a machine.",
        action: tokenId ? null : h("a", { class: "button", href: "/settings/enrollment-tokens" }, "Enrollment Tokens"),
      }));
      return;
    }
    list.replaceChildren(table({
      caption: "Devices, newest first",
      columns: [
        {
          title: "Hostname",
          class: "col-main",
          cell: (d) => h("div", {}, h("div", { class: "strong" }, d.hostname || "—"), h("div", { class: "mono small muted" }, d.id)),
        },
        {
          title: "Token",
          cell: (d) => h("a", { class: "nowrap", href: `/devices?token=${encodeURIComponent(d.tokenId)}`, title: d.tokenId },
            labels.get(d.tokenId) ?? d.tokenId),
        },
        {
          title: "Tags",
          cell: (d) => (d.tags?.length
            ? h("span", { class: "tags" }, d.tags.map((t) => h("span", { class: "tag" }, t)))
            : h("span", { class: "muted" }, "—")),
        },
        { title: "Enrolled", cell: (d) => when(d.enrolledAt) },
        { title: "Last seen", cell: (d) => when(d.lastSeenAt, "Never") },
        { title: "State", cell: (d) => badge(deviceState(d)) },
        { title: "Certificate expires", cell: (d) => when(d.notAfter) },
        {
          title: "Actions",
          class: "actions",
          cell: (d) => (deviceState(d) === "Revoked"
            ? h("span", { class: "muted", title: `Revoked ${d.revokedAt ?? ""}` }, "—")
            : h("button", { type: "button", class: "button button-danger-quiet", onclick: () => revoke(d) }, "Revoke")),
        },
      ],
      rows: rows.map((device) => ({ item: device, props: { "data-device-id": device.id } })),
    }));
    if (pageToken) {
      more.replaceChildren(h("button", { type: "button", class: "button button-quiet", onclick: () => load(true) },
        "Show more devices"));
    }
  }

  async function revoke(device) {
    const sure = await confirmAction({
      title: `Revoke ${device.hostname || device.id}?`,
      text: "The server refuses this device's certificate from its very next call; its agent stops. "
        + "This cannot be undone: the machine must enroll again with a token.",
      confirm: "Revoke",
    });
    if (!sure) return;
    try {
      await call("RevokeDevice", { id: device.id });
      announce(`Device ${device.hostname || device.id} revoked`);
    } catch (error) {
      report(list, error, () => load(false));
      return;
    }
    await load(false);
  }

  await load(false);
}
