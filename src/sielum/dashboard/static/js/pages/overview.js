// Overview: enrollments per day over the last 30 days, tokens and devices by state.

import { call } from "../api.js";
import { h, pageHeader, spinner, stateName } from "../ui.js";
import { report, setTitle } from "./common.js";

const DAYS = 30;
const DAY_LABEL = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });

function count(value) {
  return Number(value ?? 0);
}

// A round number at or above `max`, so the axis reads 0, 5, 10 rather than 0, 3.5, 7.
function niceCeiling(max) {
  if (max <= 4) return 4;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 1.2, 1.6, 2, 3, 4, 5, 6, 8, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

function dayLabel(day) {
  return DAY_LABEL.format(new Date(`${day}T00:00:00Z`));
}

function stat(label, value, note, tone = "") {
  return h("div", { class: `card stat ${tone}` },
    h("p", { class: "stat-label" }, label),
    h("p", { class: "stat-value" }, value.toLocaleString()),
    note ? h("p", { class: "stat-note" }, note) : null);
}

function enrollmentChart(days) {
  const values = days.map((d) => count(d.count));
  const total = values.reduce((a, b) => a + b, 0);
  const top = niceCeiling(Math.max(...values, 0));
  const bars = h("div", { class: "chart-bars", role: "img",
    "aria-label": `Enrollments per day over the last ${days.length} days: ${total} in all; the table below lists each day.` },
    days.map((d) => {
      const bar = h("div", { class: "bar" });
      bar.style.height = `${(count(d.count) / top) * 100}%`;
      return h("div", { class: "bar-slot", title: `${dayLabel(d.day)}: ${count(d.count)}` }, bar);
    }));
  const ticks = [top, top / 2, 0].map((v) => h("span", {}, Number.isInteger(v) ? v : v.toFixed(1)));
  const middle = days[Math.floor(days.length / 2)];
  return h("figure", { class: "card chart" },
    h("figcaption", {},
      h("h2", {}, "Enrollments per day"),
      h("p", { class: "muted" }, `Last ${days.length} days (UTC): ${total.toLocaleString()} in all`)),
    h("div", { class: "chart-body" },
      h("div", { class: "chart-y", "aria-hidden": "true" }, ticks),
      bars),
    h("div", { class: "chart-x", "aria-hidden": "true" },
      h("span", {}, dayLabel(days[0].day)),
      h("span", {}, dayLabel(middle.day)),
      h("span", {}, "Today")),
    h("details", { class: "chart-table" },
      h("summary", {}, "Show as a table"),
      h("table", { class: "data compact" },
        h("caption", { class: "visually-hidden" }, "Enrollments per day"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Day (UTC)"), h("th", { scope: "col", class: "num" }, "Enrollments"))),
        h("tbody", {}, days.slice().reverse().map((d) => h("tr", {},
          h("td", {}, d.day), h("td", { class: "num" }, count(d.count))))))));
}

function breakdown(title, entries, prefix) {
  const total = entries.reduce((a, e) => a + count(e.count), 0);
  const bar = h("div", { class: "stack", role: "img",
    "aria-label": entries.map((e) => `${stateName(e.state, prefix)}: ${count(e.count)}`).join(", ") });
  for (const entry of entries) {
    if (!count(entry.count)) continue;
    const part = h("div", { class: `stack-part tone-${stateName(entry.state, prefix).toLowerCase()}` });
    part.style.flexGrow = String(count(entry.count));
    bar.append(part);
  }
  if (!total) bar.append(h("div", { class: "stack-part tone-none" }));
  return h("section", { class: "card breakdown", "aria-label": title },
    h("h2", {}, title),
    bar,
    h("ul", { class: "legend" }, entries.map((e) => {
      const name = stateName(e.state, prefix);
      return h("li", {},
        h("span", { class: `swatch tone-${name.toLowerCase()}`, "aria-hidden": "true" }),
        h("span", { class: "legend-name" }, name),
        h("span", { class: "legend-count" }, count(e.count).toLocaleString()));
    })));
}

export async function render(main) {
  setTitle("Overview");
  const body = h("div", {}, spinner());
  main.replaceChildren(
    pageHeader({ title: "Overview", intro: "Enrollments and the state of every token and device." }),
    body);
  let answer;
  try {
    answer = await call("GetOverview", { days: DAYS });
  } catch (error) {
    report(body, error, () => render(main));
    return;
  }
  const tokens = answer.tokens ?? [];
  const devices = answer.devices ?? [];
  const days = answer.enrollmentsPerDay ?? [];
  const byState = (entries, state) => count(entries.find((e) => e.state === state)?.count);
  const enrolled = days.reduce((a, d) => a + count(d.count), 0);
  const activeDevices = byState(devices, "DEVICE_STATE_ACTIVE");
  body.replaceChildren(...[
    h("div", { class: "stats" },
      stat("Active devices", activeDevices, `${devices.reduce((a, e) => a + count(e.count), 0).toLocaleString()} enrolled in all`),
      stat(`Enrolled, last ${DAYS} days`, enrolled, days.length ? `${count(days.at(-1).count)} today` : ""),
      stat("Active tokens", byState(tokens, "TOKEN_STATE_ACTIVE"), "Can enroll machines now"),
      stat("Revoked devices", byState(devices, "DEVICE_STATE_REVOKED"), "Refused on every call", "stat-quiet")),
    days.length ? enrollmentChart(days) : null,
    h("div", { class: "cards two" },
      breakdown("Tokens by state", tokens, "TOKEN_STATE_"),
      breakdown("Devices by state", devices, "DEVICE_STATE_")),
    tokens.every((e) => !count(e.count))
      ? h("p", { class: "alert alert-info" }, "No enrollment tokens yet. ",
        h("a", { href: "/settings/enrollment-tokens" }, "Create the first one"), ".")
      : null,
  ].filter(Boolean));
}
