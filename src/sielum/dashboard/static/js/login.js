// /login#<code>: trade the one-time code for a session cookie, and take the code out of the address bar.

import { sentence } from "./ui.js";

const status = document.getElementById("login-status");
const help = document.getElementById("login-help");

async function signIn() {
  const code = decodeURIComponent(location.hash.slice(1));
  // The code leaves the address bar (and the history entry) before anything else happens.
  history.replaceState(null, "", "/login");
  if (!code) {
    fail("This address has no sign-in code.");
    return;
  }
  let response;
  try {
    response = await fetch("/session/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code }),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    fail("The Sielum server cannot be reached.");
    return;
  }
  if (response.ok) {
    status.textContent = "Signed in. Opening the dashboard…";
    location.replace("/");
    return;
  }
  let message = `The server answered ${response.status}.`;
  try {
    const error = await response.json();
    if (error.message) message = error.message;
  } catch {
    // keep the status line
  }
  fail(message);
}

function fail(message) {
  document.title = "Sign-in failed · Sielum";
  status.textContent = sentence(message);
  status.classList.add("alert", "alert-error");
  status.setAttribute("role", "alert");
  help.hidden = false;
}

signIn();
