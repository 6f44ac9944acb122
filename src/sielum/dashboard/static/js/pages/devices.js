// Devices: every enrolled machine, filtered by the token it enrolled with, a tag, its host
// name (exact, or its beginning with a trailing *) or a fact; its tags and facts; the ones
// not heard from lately marked; revoke one.

import { call, listAll } from "../api.js";
import { announce, badge, confirmAction, emptyState, h, pageHeader, spinner, stateName, table, when } from "../ui.js";
import { report, setTitle } from "./common.js";

const PAGE_SIZE = 50;
// A device that has not called for this long is marked "Not heard from": a dozen missed
// heartbeats at the default 5-minute interval, and the shortest of the
// sielum_devices_silent{for} figures on /metrics.
export const SILENT_AFTER_MS = 3600 * 1000;

// When the device last called: its last heartbeat, else its enrollment.
function heardAt(device) {
  return new Date(device.lastSeenAt ?? device.enrolledAt);
}

export function isSilent(device, now = new Date()) {
  if (deviceState(device) === "Revoked") return false;
  return now.getTime() - heardAt(device).getTime() > SILENT_AFTER_MS;
}

function lastSeen(device, now) {
  const seen = when(device.lastSeenAt, "Never");
  if (!isSilent(device, now)) return seen;
  return h("div", { class: "last-seen" }, seen,
    h("span", { class: "badge badge-silent", title: "No call from this device for over an hour" }, "Not heard from"));
}

function facts(device) {
  const entries = Object.entries(device.facts ?? {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return null;
  return h("ul", { class: "facts", "aria-label": "Facts" }, entries.map(([name, value]) => h("li", {}, `${name}=${value}`)));
}

// What the Hostname box asks for: "web-*" is every name that starts with "web-", anything
// else the exact name (a * elsewhere is part of the name).
export function hostnameQuery(text) {
  if (text.length > 1 && text.endsWith("*")) return { hostnamePrefix: text.slice(0, -1) };
  return text ? { hostname: text } : {};
}

// The Fact box's "name=value" as the facts map ListDevices takes; null when it is not that.
export function factQuery(text) {
  const at = text.indexOf("=");
  if (at < 1) return null;
  return { [text.slice(0, at).trim()]: text.slice(at + 1) };
}

function deviceState(device) {
  return stateName(device.state, "DEVICE_STATE_");
}

export async function render(main) {
  setTitle("Devices");
  const params = new URLSearchParams(location.search);
  let tokenId = params.get("token") ?? "";
  let tag = params.get("tag") ?? "";
  let hostname = params.get("hostname") ?? "";
  let fact = params.get("fact") ?? "";
  let pageToken = "";
  const rows = [];
  const labels = new Map();
  const list = h("section", { class: "panel", "aria-label": "Devices" });
  const more = h("div", { class: "more" });
  const filter = h("select", { id: "token-filter" }, h("option", { value: "" }, "All tokens"));
  const tagFilter = h("input", { id: "tag-filter", type: "search", value: tag, autocomplete: "off", size: 14, "aria-describedby": "tag-filter-hint" });
  const hostnameFilter = h("input", {
    id: "hostname-filter", type: "search", value: hostname, autocomplete: "off", spellcheck: "false", size: 22,
    "aria-describedby": "hostname-filter-hint",
  });
  const factFilter = h("input", {
    id: "fact-filter", type: "search", value: fact, autocomplete: "off", spellcheck: "false", size: 18,
    "aria-describedby": "fact-filter-hint",
  });
  const summary = h("p", { class: "filter-summary", role: "status" });
  function address() {
    const query = new URLSearchParams();
    if (tokenId) query.set("token", tokenId);
    if (tag) query.set("tag", tag);
    if (hostname) query.set("hostname", hostname);
    if (fact) query.set("fact", fact);
    const text = query.toString();
    history.replaceState(null, "", text ? `/devices?${text}` : "/devices");
  }
  filter.addEventListener("change", () => {
    tokenId = filter.value;
    address();
    load(false);
  });
  // Enter in a field, or leaving it changed, searches.
  function search() {
    const nextTag = tagFilter.value.trim();
    const nextHostname = hostnameFilter.value.trim();
    const nextFact = factFilter.value.trim();
    if (nextTag === tag && nextHostname === hostname && nextFact === fact) return;
    tag = nextTag;
    hostname = nextHostname;
    fact = nextFact;
    address();
    load(false);
  }
  tagFilter.addEventListener("change", search);
  hostnameFilter.addEventListener("change", search);
  factFilter.addEventListener("change", search);
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter devices" },
    h("div", { class: "filter" }, h("label", { for: "token-filter" }, "Token"), filter),
    h("div", { class: "filter" },
      h("label", { for: "hostname-filter" }, "Hostname"), hostnameFilter,
      h("p", { class: "hint", id: "hostname-filter-hint" }, "The exact name, or its beginning and *, e.g. web-*")),
    h("div", { class: "filter" },
      h("label", { for: "tag-filter" }, "Tag"), tagFilter,
      h("p", { class: "hint", id: "tag-filter-hint" }, "One tag, e.g. web")),
    h("div", { class: "filter" },
      h("label", { for: "fact-filter" }, "Fact"), factFilter,
      h("p", { class: "hint", id: "fact-filter-hint" }, "name=value, exactly, e.g. os=linux")),
    h("div", { class: "filter filter-buttons" }, h("button", { type: "submit", class: "button button-quiet" }, "Search")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  const pending = h("a", { class: "button button-quiet", href: "/devices/pending" }, "Pending");

  main.replaceChildren(
    pageHeader({
      title: "Devices",
      intro: "Machines that enrolled with a token. A revoked device is refused from its very next call.",
      actions: [pending],
    }),
    form,
    summary,
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
    const wanted = fact ? factQuery(fact) : {};
    if (!wanted) {
      summary.textContent = "";
      list.replaceChildren(emptyState({
        title: "Write the fact as name=value",
        text: "The name of a fact the agent reported, an equals sign, then the exact value, e.g. os=linux.",
      }));
      return;
    }
    let answer;
    try {
      answer = await call("ListDevices", {
        pageSize: PAGE_SIZE, pageToken, tokenId: tokenId || undefined, tag: tag || undefined,
        ...hostnameQuery(hostname), facts: fact ? wanted : undefined,
      });
    } catch (error) {
      if (mine === generation) report(list, error, () => load(false));
      return;
    }
    if (mine !== generation) return;
    rows.push(...(answer.devices ?? []));
    pageToken = answer.nextPageToken ?? "";
    const now = new Date();
    const silent = rows.filter((device) => isSilent(device, now)).length;
    summary.textContent = silentSummary(silent, rows.length);
    if (!rows.length) {
      if ([hostname, tag, fact].filter(Boolean).length > 1) {
        list.replaceChildren(emptyState({
          title: "No device matches all of these",
          text: "Every filter must hold at once. Clear one of them to see more devices.",
        }));
        return;
      }
      if (hostname && hostnameQuery(hostname).hostnamePrefix !== undefined) {
        list.replaceChildren(emptyState({
          title: "No host name starts with this",
          text: "No device's host name begins with the text before the * (upper and lower case differ). "
            + "Check the spelling, or clear the field to see every device.",
        }));
        return;
      }
      if (hostname) {
        list.replaceChildren(emptyState({
          title: "No device with this host name",
          text: "No device has exactly this host name. To search by its beginning, end it with *, e.g. web-*. "
            + "Check the spelling, or clear the field to see every device.",
        }));
        return;
      }
      if (fact) {
        list.replaceChildren(emptyState({
          title: "No device with this fact",
          text: "No device reported this fact with exactly this value (upper and lower case differ). "
            + "Each device's facts are listed under its host name.",
        }));
        return;
      }
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
          cell: (d) => h("div", {}, h("div", { class: "strong nowrap" }, d.hostname || "—"),
            h("div", { class: "mono small muted" }, d.id), facts(d)),
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
        { title: "Last seen", cell: (d) => lastSeen(d, now) },
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
      rows: rows.map((device) => ({
        item: device,
        props: { "data-device-id": device.id, class: isSilent(device, now) ? "silent" : undefined },
      })),
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

// "2 of the 4 devices shown have not been heard from ...", in words that fit the counts.
function silentSummary(silent, shown) {
  if (!silent) return "";
  const verb = silent === 1 ? "has" : "have";
  const which = silent === shown
    ? (shown === 1 ? "The device shown" : `All ${shown} devices shown`)
    : `${silent} of the ${shown} devices shown`;
  return `${which} ${verb} not been heard from for over an hour.`;
}
