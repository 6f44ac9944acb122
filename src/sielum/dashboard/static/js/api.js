// Calls to the Sielum server: AdminService over the Connect protocol, and the session endpoints.
// The session cookie is HttpOnly: this code never sees it, the browser sends it.

const SERVICE = "/sielum.admin.v1.AdminService/";

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }

  // A refusal of the session itself: signed out, expired, or the admin was revoked.
  get endsSession() {
    return this.code === "unauthenticated" || this.code === "permission_denied";
  }
}

async function post(path, body, headers = {}) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify(body ?? {}),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(
      "unavailable",
      "The Sielum server cannot be reached. Check that it is running, then try again.",
      0,
    );
  }
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = {};
  }
  if (!response.ok) {
    const message = typeof data.message === "string" && data.message
      ? data.message
      : `The server answered ${response.status} ${response.statusText}.`;
    throw new ApiError(data.code ?? "unknown", message, response.status);
  }
  return data;
}

// One AdminService method: the request and the answer in protobuf's JSON form.
export function call(method, request = {}) {
  return post(SERVICE + method, request, { "Connect-Protocol-Version": "1" });
}

export function session(action, body = {}) {
  return post(`/session/${action}`, body);
}

// Every page of a listing, up to `limit` items.
export async function listAll(method, request, field, limit = 1000) {
  const items = [];
  let pageToken = "";
  do {
    const answer = await call(method, { ...request, pageSize: Math.min(500, limit), pageToken });
    items.push(...(answer[field] ?? []));
    pageToken = answer.nextPageToken ?? "";
  } while (pageToken && items.length < limit);
  return items.slice(0, limit);
}
