// What every page shares: running a call and turning a refused session into the signed-out view.

import { ApiError, call } from "../api.js";
import { errorBox, h, spinner } from "../ui.js";

// Shows the error in words in `place`; a refused session ends the page instead.
export function report(place, error, retry) {
  if (error instanceof ApiError && error.endsSession) {
    window.dispatchEvent(new CustomEvent("sielum:session-ended", { detail: error.message }));
    return;
  }
  place.replaceChildren(errorBox(error, { retry }));
}

export function setTitle(title) {
  document.title = `${title} · Sielum`;
}

// A list read a page at a time: `load` fetches the next page of `method` into `list`
// (drawn whole by `draw(rows)`, or `empty()` when there is nothing) and offers the
// page after it with a button in `more`.
export function pagedList({ list, more, method, request, field, draw, empty, moreText }) {
  let pageToken = "";
  const rows = [];
  async function load() {
    more.replaceChildren();
    if (!rows.length) list.replaceChildren(spinner());
    let answer;
    try {
      answer = await call(method, { ...request, pageToken });
    } catch (error) {
      report(list, error, load);
      return;
    }
    rows.push(...(answer[field] ?? []));
    pageToken = answer.nextPageToken ?? "";
    if (!rows.length) {
      list.replaceChildren(empty());
      return;
    }
    list.replaceChildren(draw(rows));
    if (pageToken) {
      more.replaceChildren(h("button", { type: "button", class: "button button-quiet", onclick: load }, moreText));
    }
  }
  return load;
}
