// Settings -> Enrollment Tokens: list and filter tokens, make one (its secret shown once), revoke.

import { call } from "../api.js";
import {
  announce, badge, config, sentence, confirmAction, copyText, emptyState, h, modal, pageHeader, spinner,
  stateName, table, utcOffset, when,
} from "../ui.js";
import { report, setTitle } from "./common.js";

const STATES = [
  ["", "All states"],
  ["active", "Active"],
  ["expired", "Expired"],
  ["exhausted", "Exhausted"],
  ["revoked", "Revoked"],
];
const PAGE_SIZE = 50;
const MAX_USES = 1_000_000_000;
const MAX_LABEL = 200;
const AGENT_CERT_DIR = "/etc/sielum";

function tokenState(token) {
  return stateName(token.state, "TOKEN_STATE_");
}

function uses(token) {
  return `${token.uses ?? 0}/${token.maxUses === undefined ? "∞" : token.maxUses}`;
}

// The token's policy in a few words, for its row and its created dialog.
export function policySummary(token) {
  const parts = [];
  if (token.requiresApproval) parts.push("Approval required");
  if (token.tags?.length) parts.push(`Tags: ${token.tags.join(", ")}`);
  if (token.allowedNetworks?.length) parts.push(`Networks: ${token.allowedNetworks.join(", ")}`);
  if (token.hostnamePattern) parts.push(`Hostname: ${token.hostnamePattern}`);
  const facts = Object.entries(token.requiredFacts ?? {});
  if (facts.length) parts.push(`Facts: ${facts.map(([k, v]) => `${k}=${v}`).join(", ")}`);
  if (token.ephemeralAfter) parts.push(`Ephemeral after ${token.ephemeralAfter}`);
  return parts.join(" · ");
}

// The secret is pasted at a prompt that does not echo it and handed over in the
// environment: never on a command line, where shell history would keep it. Then one
// argument (a flag and its value) per line, joined by backslash-newline as a shell reads
// it: the box wraps only between arguments, never inside one, and Copy copies these
// very lines, which any POSIX shell runs as shown.
export function agentCommand() {
  return "read -rsp 'enrollment token: ' SIELUM_ENROLLMENT_TOKEN"
    + " && export SIELUM_ENROLLMENT_TOKEN && echo\n"
    + [
      "sielum-agent enroll",
      `  --server ${config("enroll-url")}`,
      `  --ca-fingerprint ${config("ca-fingerprint")}`,
      `  --cert-dir ${AGENT_CERT_DIR}`,
    ].join(" \\\n");
}

export async function render(main) {
  setTitle("Enrollment Tokens");
  const params = new URLSearchParams(location.search);
  let state = STATES.some(([value]) => value === params.get("state")) ? params.get("state") : "";
  let pageToken = "";
  const list = h("section", { class: "panel", "aria-label": "Enrollment tokens" });
  const more = h("div", { class: "more" });
  const filter = h("select", { id: "state-filter" },
    STATES.map(([value, text]) => h("option", { value, selected: value === state }, text)));
  filter.addEventListener("change", () => {
    state = filter.value;
    const query = state ? `?state=${state}` : "";
    history.replaceState(null, "", `/settings/enrollment-tokens${query}`);
    load(false);
  });
  const newToken = h("button", { type: "button", class: "button", onclick: () => openNewToken(() => load(false)) },
    "New Token");

  main.replaceChildren(
    pageHeader({
      crumbs: [["Settings", "/settings"]],
      title: "Enrollment Tokens",
      intro: "An agent exchanges a token, once, for its device certificate. "
        + "A token's secret is shown only when it is created.",
      actions: [newToken],
    }),
    h("div", { class: "toolbar" },
      h("label", { for: "state-filter" }, "State"), filter),
    list,
    more);

  const rows = [];

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
      answer = await call("ListEnrollmentTokens", {
        pageSize: PAGE_SIZE, pageToken, state: state ? `TOKEN_STATE_${state.toUpperCase()}` : undefined,
      });
    } catch (error) {
      if (mine === generation) report(list, error, () => load(false));
      return;
    }
    if (mine !== generation) return;
    rows.push(...(answer.tokens ?? []));
    pageToken = answer.nextPageToken ?? "";
    if (!rows.length) {
      list.replaceChildren(state
        ? emptyState({
          title: `No ${state} tokens`,
          text: "No enrollment token is in this state. Choose another state to see the others.",
        })
        : emptyState({
          title: "No enrollment tokens yet",
          text: "Create a token, then run the agent command it comes with on each new machine.",
          action: h("button", { type: "button", class: "button", onclick: () => openNewToken(() => load(false)) },
            "Create a token"),
        }));
      return;
    }
    list.replaceChildren(table({
      caption: "Enrollment tokens, newest first",
      columns: [
        {
          title: "Label",
          class: "col-main",
          cell: (t) => h("div", {}, h("div", { class: "strong" }, t.label), h("div", { class: "mono small muted" }, t.id),
            policySummary(t) ? h("div", { class: "small policy" }, policySummary(t)) : null),
        },
        { title: "State", cell: (t) => badge(tokenState(t)) },
        {
          title: "Uses",
          class: "num",
          cell: (t) => h("a", { href: `/devices?token=${encodeURIComponent(t.id)}`, title: "Devices enrolled with this token" }, uses(t)),
        },
        { title: "Expires", cell: (t) => when(t.expiresAt, "Never") },
        { title: "Last used", cell: (t) => when(t.lastUsedAt, "Never") },
        { title: "Created by", cell: (t) => h("span", {}, t.createdBy) },
        {
          title: "Actions",
          class: "actions",
          cell: (t) => (tokenState(t) === "Revoked"
            ? h("span", { class: "muted", title: `Revoked ${t.revokedAt ?? ""}` }, "—")
            : h("button", { type: "button", class: "button button-danger-quiet", onclick: () => revoke(t) }, "Revoke")),
        },
      ],
      rows: rows.map((token) => ({ item: token, props: { "data-token-id": token.id } })),
    }));
    if (pageToken) {
      more.replaceChildren(h("button", { type: "button", class: "button button-quiet", onclick: () => load(true) },
        "Show more tokens"));
    }
  }

  async function revoke(token) {
    const sure = await confirmAction({
      title: `Revoke “${token.label}”?`,
      text: "No agent can enroll with this token any more. Devices already enrolled with it keep "
        + "working; revoke them on the Devices page if they must stop too.",
      confirm: "Revoke",
    });
    if (!sure) return;
    try {
      await call("RevokeEnrollmentToken", { id: token.id });
      announce(`Token ${token.label} revoked`);
    } catch (error) {
      report(list, error, () => load(false));
      return;
    }
    await load(false);
  }

  await load(false);
}

// --- New Token -----------------------------------------------------------------------------------

function field({ id, label, hint, input }) {
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  input.setAttribute("id", id);
  input.setAttribute("aria-describedby", `${hintId} ${errorId}`);
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    input,
    h("p", { id: hintId, class: "hint" }, hint),
    h("p", { id: errorId, class: "field-error" }));
}

function setFieldError(form, id, message) {
  const input = form.querySelector(`#${id}`);
  const error = form.querySelector(`#${id}-error`);
  error.textContent = message ?? "";
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

// What the form holds, checked as the server will; errors by field id.
function readForm(form) {
  const errors = {};
  const label = form.querySelector("#token-label").value.trim();
  if (!label) errors["token-label"] = "Enter a label: what or who the token is for.";
  else if (label.length > MAX_LABEL) errors["token-label"] = `At most ${MAX_LABEL} characters.`;
  const maxUsesText = form.querySelector("#token-max-uses").value.trim();
  let maxUses;
  if (maxUsesText) {
    maxUses = Number(maxUsesText);
    if (!/^\d+$/.test(maxUsesText) || maxUses < 1 || maxUses > MAX_USES) {
      errors["token-max-uses"] = `A whole number from 1 to ${MAX_USES.toLocaleString()}, or blank for unlimited.`;
    }
  }
  const expiresText = form.querySelector("#token-expires-at").value;
  let expiresAt;
  if (expiresText) {
    const date = new Date(expiresText);
    if (Number.isNaN(date.getTime())) errors["token-expires-at"] = "Not a date and time.";
    else if (date <= new Date()) errors["token-expires-at"] = "Choose a time in the future, or leave it blank.";
    else expiresAt = date.toISOString();
  }
  const advanced = readAdvanced(form, errors);
  return { errors, request: { label, maxUses, expiresAt, ...advanced } };
}

const DURATION = /^(\d+)\s*(s|m|h|d)$/;
const SECONDS = { s: 1, m: 60, h: 3600, d: 86400 };
const TAG = /^[a-z0-9][a-z0-9._-]{0,62}$/;

function words(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

// The Advanced section: the token's policy. The server checks it again, in the same words.
function readAdvanced(form, errors) {
  const tags = words(form.querySelector("#token-tags").value);
  const badTag = tags.find((tag) => !TAG.test(tag));
  if (badTag) errors["token-tags"] = `“${badTag}” is not a tag: a-z, 0-9, . _ - starting with a letter or digit.`;
  const allowedNetworks = words(form.querySelector("#token-networks").value);
  const hostnamePattern = form.querySelector("#token-hostname-pattern").value.trim();
  const requiredFacts = {};
  for (const line of form.querySelector("#token-facts").value.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1 || at === line.length - 1) {
      errors["token-facts"] = `“${line.trim()}” is not NAME=GLOB.`;
      break;
    }
    requiredFacts[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  const ephemeralText = form.querySelector("#token-ephemeral").value.trim();
  let ephemeralAfter;
  if (ephemeralText) {
    const match = DURATION.exec(ephemeralText);
    if (!match) errors["token-ephemeral"] = "A duration like 30m, 12h or 7d, or blank.";
    else ephemeralAfter = `${Number(match[1]) * SECONDS[match[2]]}s`;
  }
  const requiresApproval = form.querySelector("#token-approval").checked;
  return {
    tags: tags.length ? tags : undefined,
    allowedNetworks: allowedNetworks.length ? allowedNetworks : undefined,
    hostnamePattern: hostnamePattern || undefined,
    requiredFacts: Object.keys(requiredFacts).length ? requiredFacts : undefined,
    ephemeralAfter,
    requiresApproval: requiresApproval || undefined,
  };
}

function advancedSection() {
  return h("details", { class: "advanced" },
    h("summary", {}, "Advanced"),
    h("div", { class: "advanced-fields" },
      field({
        id: "token-tags",
        label: "Tags",
        hint: "Every device of this token carries them, also in its certificate. Separate with spaces or commas.",
        input: h("input", { type: "text", name: "tags", autocomplete: "off" }),
      }),
      field({
        id: "token-networks",
        label: "Allowed networks",
        hint: "Enroll only from these CIDRs (IPv4 or IPv6), e.g. 10.0.0.0/8. Blank for anywhere.",
        input: h("input", { type: "text", name: "allowedNetworks", autocomplete: "off" }),
      }),
      field({
        id: "token-hostname-pattern",
        label: "Hostname pattern",
        hint: "A shell glob the machine's host name must match, e.g. web-*.",
        input: h("input", { type: "text", name: "hostnamePattern", autocomplete: "off" }),
      }),
      field({
        id: "token-facts",
        label: "Required facts",
        hint: "One NAME=GLOB per line, e.g. os=linux: each fact must be reported and match.",
        input: h("textarea", { name: "requiredFacts", rows: 2, spellcheck: "false" }),
      }),
      field({
        id: "token-ephemeral",
        label: "Ephemeral after",
        hint: "Revoke a device once it has not called for this long, e.g. 1h. Blank for never.",
        input: h("input", { type: "text", name: "ephemeralAfter", autocomplete: "off" }),
      }),
      h("div", { class: "field field-check" },
        h("label", { for: "token-approval" },
          h("input", { type: "checkbox", id: "token-approval", name: "requiresApproval" }),
          " Require approval"),
        h("p", { class: "hint" }, "Each enrollment waits until an admin approves it under Devices → Pending."))));
}

// A token's secret is worth something to whoever finds it until it expires: the form
// starts at 24 hours from now, with shorter and longer choices one click away, and
// "Never" still there for a token meant to stay (issue: no nudge towards a short life).
export const DEFAULT_EXPIRY_HOURS = 24;
const EXPIRY_CHOICES = [["1 hour", 1], ["24 hours", 24], ["7 days", 24 * 7], ["30 days", 24 * 30], ["Never", null]];

// The value a datetime-local input takes for a moment: the browser's local time, to the minute.
function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`
    + `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function hoursFromNow(hours) {
  const date = new Date(Date.now() + hours * 3600 * 1000);
  date.setSeconds(0, 0);
  return localInputValue(date);
}

function expiresField() {
  const input = h("input", { type: "datetime-local", name: "expiresAt", value: hoursFromNow(DEFAULT_EXPIRY_HOURS) });
  const choices = h("div", { class: "choices", role: "group", "aria-label": "Expires in" },
    h("span", { class: "choices-label", "aria-hidden": "true" }, "Expires in:"),
    EXPIRY_CHOICES.map(([text, hours]) => h("button", {
      type: "button",
      class: "chip",
      onclick: () => {
        input.value = hours === null ? "" : hoursFromNow(hours);
        announce(hours === null ? "The token will never expire" : `The token will expire in ${text}`);
      },
    }, text)));
  const element = field({
    id: "token-expires-at",
    label: "Expires at",
    hint: `Your local time (${utcOffset()}). Set to ${DEFAULT_EXPIRY_HOURS} hours from now: a short life limits `
      + "what a leaked secret can do. Clear it, or choose Never, for a token that never expires.",
    input,
  });
  element.querySelector(".hint").before(choices);
  return element;
}

function openNewToken(onDone) {
  let created = false;
  const serverError = h("div", { class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "button" }, "Create");
  const form = h("form", { class: "form", novalidate: true },
    serverError,
    field({
      id: "token-label",
      label: "Label",
      hint: "What the token is for, e.g. web-rollout. Shown in lists.",
      input: h("input", { type: "text", name: "label", autocomplete: "off", required: true, maxlength: 400 }),
    }),
    field({
      id: "token-max-uses",
      label: "Max uses",
      hint: "How many machines may enroll with it. Leave blank for unlimited.",
      input: h("input", { type: "number", name: "maxUses", min: 1, max: MAX_USES, step: 1, inputmode: "numeric" }),
    }),
    expiresField(),
    advancedSection(),
    h("div", { class: "dialog-actions" },
      h("button", { type: "button", class: "button button-quiet", onclick: () => dialog.close() }, "Cancel"),
      submit));

  const dialog = modal({ title: "New Token", labelledBy: "new-token-title" }, form);
  dialog.addEventListener("close", () => { if (created) onDone(); });
  form.querySelector("#token-label").focus();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    serverError.replaceChildren();
    const { errors, request } = readForm(form);
    for (const id of ["token-label", "token-max-uses", "token-expires-at", "token-tags", "token-facts", "token-ephemeral"]) {
      setFieldError(form, id, errors[id]);
    }
    const first = Object.keys(errors)[0];
    if (first) {
      if (first.startsWith("token-") && form.querySelector(`#${first}`).closest("details")) {
        form.querySelector("details.advanced").open = true;
      }
      form.querySelector(`#${first}`).focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    let answer;
    try {
      answer = await call("CreateEnrollmentToken", request);
    } catch (error) {
      submit.disabled = false;
      submit.textContent = "Create";
      if (error.endsSession) {
        dialog.close();
        report(serverError, error);
        return;
      }
      serverError.replaceChildren(h("strong", {}, "The server did not create the token. "), sentence(error.message));
      return;
    }
    created = true;
    showSecret(dialog, answer);
  });
}

// The secret, once: it lives only in this dialog, which leaves the page when closed.
function showSecret(dialog, answer) {
  const { token, secret } = answer;
  const command = agentCommand();
  const status = h("p", { class: "copy-status" });
  const copyButton = (text, value, what) => h("button", {
    type: "button",
    class: "button button-quiet",
    onclick: async () => {
      const done = await copyText(value);
      status.textContent = done ? `${what} copied to the clipboard.` : "Copying failed: select the text and copy it yourself.";
      announce(status.textContent);
    },
  }, text);
  dialog.querySelector("h2").textContent = "Token created";
  // Wide enough for the command's longest line (the fingerprint) on a desktop.
  dialog.classList.add("modal-wide");
  dialog.querySelector("form").replaceWith(h("div", { class: "created" },
    h("p", {},
      "Token ", h("strong", {}, token.label), ` (${uses(token)} uses, expires `,
      token.expiresAt ? when(token.expiresAt) : "never", ")."),
    policySummary(token) ? h("p", { class: "policy" }, policySummary(token)) : null,
    token.requiresApproval
      ? h("p", { class: "alert alert-info" },
        "Each enrollment with it waits for approval: approve it under Devices → Pending.")
      : null,
    h("div", { class: "alert alert-warning" },
      h("strong", {}, "Copy the secret now. "),
      "It is shown this once: Sielum keeps only a hash of it."),
    h("div", { class: "secret-row" },
      h("label", { for: "token-secret" }, "Secret"),
      h("div", { class: "copy-row" },
        h("textarea", {
          id: "token-secret", class: "mono secret", readonly: true, rows: 1, spellcheck: "false",
          autocomplete: "off", "aria-describedby": "secret-hint",
        }, secret),
        copyButton("Copy", secret, "Secret"))),
    h("p", { id: "secret-hint", class: "hint" }, "Keep it in your secret store; hand it to agents in SIELUM_ENROLLMENT_TOKEN."),
    h("div", { class: "secret-row" },
      h("span", { class: "label", id: "command-label" }, "Agent command"),
      h("pre", { class: "command", "aria-labelledby": "command-label", tabindex: 0 }, h("code", {}, command)),
      h("div", { class: "copy-row-end" }, copyButton("Copy command", command, "Command"))),
    status,
    h("div", { class: "dialog-actions" },
      h("button", { type: "button", class: "button", onclick: () => dialog.close() }, "Done"))));
  dialog.querySelector("#token-secret").select();
  announce("Token created. Copy the secret now; it is shown this once.");
}
