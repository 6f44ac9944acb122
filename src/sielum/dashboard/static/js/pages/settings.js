// Settings: the sections an admin configures.

import { h, pageHeader } from "../ui.js";
import { setTitle } from "./common.js";

export async function render(main) {
  setTitle("Settings");
  main.replaceChildren(
    pageHeader({ title: "Settings", intro: "How machines join, and who may manage them." }),
    h("div", { class: "cards" },
      h("div", { class: "card card-link" },
        h("h2", {}, h("a", { href: "/settings/enrollment-tokens" }, "Enrollment Tokens")),
        h("p", {}, "Create the one-time credentials agents enroll with, see how often each was used, revoke them.")),
      h("div", { class: "card" },
        h("h2", {}, "Admins"),
        h("p", {}, "Admins sign in with their own certificate. Add and revoke them with ",
          h("code", {}, "sielum-admin admins"), "."))));
}
