// What every page shares: running a call and turning a refused session into the signed-out view.

import { ApiError } from "../api.js";
import { errorBox } from "../ui.js";

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
