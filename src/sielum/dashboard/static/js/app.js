// The dashboard's entry point: who is signed in, the navigation, and the page for this address.

import { ApiError, session } from "./api.js";
import { announce, h, sentence } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as devices from "./pages/devices.js";
import * as pending from "./pages/pending.js";
import * as audit from "./pages/audit.js";
import * as settings from "./pages/settings.js";
import * as tokens from "./pages/tokens.js";

const PAGES = {
  "/": overview,
  "/devices": devices,
  "/devices/pending": pending,
  "/audit": audit,
  "/settings": settings,
  "/settings/enrollment-tokens": tokens,
};

const main = document.getElementById("main");

function showChrome(admin) {
  document.getElementById("who").textContent = admin;
  document.querySelector(".mainnav").hidden = false;
  document.querySelector(".account").hidden = false;
  const path = location.pathname;
  for (const link of document.querySelectorAll(".mainnav a")) {
    const href = link.getAttribute("href");
    const current = href === "/" ? path === "/" : path === href || path.startsWith(`${href}/`);
    if (current) link.setAttribute("aria-current", "page");
  }
}

function hideChrome() {
  document.querySelector(".mainnav").hidden = true;
  document.querySelector(".account").hidden = true;
}

export function showSignedOut(reason) {
  hideChrome();
  document.title = "Signed out · Sielum";
  document.body.classList.add("centered");
  main.replaceChildren(
    h("div", { class: "card signin" },
      h("img", { class: "signin-logo", src: "/static/icon.svg", alt: "", width: 48, height: 48 }),
      h("h1", {}, "You are signed out"),
      reason ? h("p", { class: "alert alert-info" }, sentence(reason)) : null,
      h("p", {}, "Sign in again from a machine that holds your admin certificate:"),
      h("pre", { class: "command" }, h("code", {}, "sielum-admin dashboard open")),
      h("p", { class: "muted" },
        "Or run sielum-admin dashboard login and paste the link it prints into the address " +
        "bar, never into a command. A link works once, for 5 minutes.")));
  main.focus();
}

async function signOut() {
  try {
    await session("logout");
  } catch (error) {
    // Signing out of a session that already ended is still signing out.
    if (!(error instanceof ApiError)) throw error;
  }
  history.replaceState(null, "", "/");
  showSignedOut("You signed out. Your session has ended.");
  announce("Signed out");
}

// A page's calls report a refused session here; the page is replaced by the signed-out view.
window.addEventListener("sielum:session-ended", (event) => showSignedOut(event.detail));

async function start() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  let me;
  try {
    me = await session("current");
  } catch (error) {
    if (error instanceof ApiError && error.endsSession) {
      // Why, when there is more to say than the heading does (expired, revoked).
      showSignedOut(error.message === "you are signed out" ? null : error.message);
      return;
    }
    main.replaceChildren(h("div", { class: "alert alert-error", role: "alert" }, error.message));
    return;
  }
  showChrome(me.admin);
  const page = PAGES[location.pathname.replace(/\/+$/, "") || "/"] ?? overview;
  await page.render(main);
}

start();
