// Small helpers for the pages: building elements (text is always text, never HTML),
// formatting times and states, tables that turn into cards on a phone, dialogs.

export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  setProps(element, props);
  append(element, children);
  return element;
}

function setProps(element, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      element.setAttribute("class", value);
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

// The server's messages are lower-case clauses ("this login link has expired"): a sentence here.
export function sentence(text) {
  const trimmed = String(text ?? "").trim();
  if (!trimmed) return trimmed;
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?)]$/.test(capital) ? capital : `${capital}.`;
}

export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // A fresh text node, a moment later, is announced even when it repeats.
  setTimeout(() => { region.textContent = text; }, 50);
}

// --- config the server renders into the page (nothing secret) ----------------------------

export function config(name) {
  return document.querySelector(`meta[name="sielum-${name}"]`)?.content ?? "";
}

// --- times ----------------------------------------------------------------------------------

const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});
const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const UNITS = [
  ["year", 365 * 86400], ["month", 30 * 86400], ["week", 7 * 86400], ["day", 86400],
  ["hour", 3600], ["minute", 60], ["second", 1],
];

export function relative(date, now = new Date()) {
  const seconds = (date.getTime() - now.getTime()) / 1000;
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") {
      if (unit === "second" && Math.abs(seconds) < 45) return seconds < 0 ? "just now" : "in a moment";
      return RELATIVE.format(Math.round(seconds / size), unit);
    }
  }
  return "";
}

// A <time> showing a date and how long ago or ahead it is; `empty` when unset.
export function when(iso, empty = "—") {
  if (!iso) return h("span", { class: "muted" }, empty);
  const date = new Date(iso);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() },
    h("span", { class: "when-date" }, DATE_TIME.format(date)),
    h("span", { class: "when-relative" }, relative(date)));
}

// The browser's offset from UTC, e.g. "UTC+02:00".
export function utcOffset(date = new Date()) {
  const minutes = -date.getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+";
  const abs = Math.abs(minutes);
  return `UTC${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
}

// --- states -----------------------------------------------------------------------------------

export function stateName(value, prefix) {
  const word = String(value ?? "").replace(prefix, "").toLowerCase();
  return word ? word[0].toUpperCase() + word.slice(1) : "Unknown";
}

export function badge(text) {
  return h("span", { class: `badge badge-${text.toLowerCase()}` }, text);
}

// --- layout pieces ------------------------------------------------------------------------------

export function pageHeader({ crumbs = [], title, intro, actions = [] }) {
  return h("div", { class: "page-header" },
    h("div", { class: "page-heading" },
      crumbs.length
        ? h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
          crumbs.map(([text, href]) => [h("a", { href }, text), h("span", { "aria-hidden": "true" }, " / ")]),
          h("span", { "aria-current": "page" }, title))
        : null,
      h("h1", {}, title),
      intro ? h("p", { class: "intro" }, intro) : null),
    actions.length ? h("div", { class: "page-actions" }, actions) : null);
}

export function errorBox(error, { retry } = {}) {
  return h("div", { class: "alert alert-error", role: "alert" },
    h("strong", {}, "The server refused or failed this request."),
    h("p", {}, sentence(error?.message ?? String(error))),
    retry ? h("button", { type: "button", class: "button button-quiet", onclick: retry }, "Try again") : null);
}

export function emptyState({ title, text, action }) {
  return h("div", { class: "empty" },
    h("div", { class: "empty-icon", "aria-hidden": "true" }),
    h("h2", {}, title),
    h("p", {}, text),
    action ?? null);
}

// A table whose rows become cards on a narrow screen: each cell carries its column's name.
export function table({ caption, columns, rows }) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "data" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.title)))),
      h("tbody", {}, rows.map((row) => h("tr", row.props ?? {},
        columns.map((c) => h("td", { "data-label": c.title, class: c.class }, c.cell(row.item))))))));
}

export function spinner(text = "Loading…") {
  return h("p", { class: "loading", role: "status" }, text);
}

// --- dialogs ------------------------------------------------------------------------------------

// A modal <dialog>: focus stays inside, Escape closes it, and it leaves the page when closed
// (with everything in it, such as a token secret).
export function modal({ title, labelledBy = "dialog-title", className = "" }, ...content) {
  const dialog = h("dialog", { class: `modal ${className}`, "aria-labelledby": labelledBy },
    h("h2", { id: labelledBy }, title), ...content);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

// Resolves true when the admin confirms, false on Cancel or Escape.
export function confirmAction({ title, text, confirm, danger = true }) {
  return new Promise((resolve) => {
    let confirmed = false;
    const dialog = modal({ title, labelledBy: "confirm-title", className: "modal-small" },
      h("p", {}, text),
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "button button-quiet", onclick: () => dialog.close() }, "Cancel"),
        h("button", {
          type: "button",
          class: danger ? "button button-danger" : "button",
          onclick: () => { confirmed = true; dialog.close(); },
        }, confirm)));
    dialog.addEventListener("close", () => resolve(confirmed));
    dialog.querySelector(".button-quiet").focus();
  });
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Without the asynchronous clipboard (refused permission), the old way.
    const area = h("textarea", { class: "visually-hidden", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    let done = false;
    try {
      done = document.execCommand("copy");
    } catch {
      done = false;
    }
    area.remove();
    return done;
  }
}
