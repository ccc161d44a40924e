// The one place that talks HTTP to the center's API (viewer/API_CONTRACT.md).
// Session cookie + X-CSRF-Token on every state-changing request.

let csrfToken = null;
let currentUser = null;
const unauthorizedListeners = new Set();

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** FastAPI's detail is a string, or a list of {loc, msg} for validation errors. */
function detailText(data, response) {
  const detail = data && typeof data === 'object' ? data.detail : null;
  if (typeof detail === 'string' && detail) return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => (d && typeof d === 'object' ? `${(d.loc ?? []).slice(1).join('.')}: ${d.msg}` : String(d)))
      .join('; ');
  }
  if (response.status === 401) return 'Your session has ended; please sign in again.';
  if (response.status === 403) return 'You are not allowed to do this.';
  if (response.status === 404) return 'Not found (or not visible to you).';
  if (response.status >= 500) return `The server failed (${response.status}); try again shortly.`;
  return `Request failed: ${response.status} ${response.statusText}`;
}

/**
 * Call the API. Resolves with the parsed JSON (null for 204); rejects with ApiError
 * carrying the server's `detail` message. A 401 on anything but login notifies the
 * app so it can send the user back to the login page.
 */
export async function api(method, path, { body, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '' && v !== false) params.set(k, String(v));
    }
    const qs = params.toString();
    if (qs) url += `?${qs}`;
  }
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!['GET', 'HEAD'].includes(method) && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      credentials: 'same-origin',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'The server cannot be reached; check the network connection.');
  }
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') ?? '';
  const data = type.includes('json') ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith('/api/auth/login')) {
      currentUser = null;
      csrfToken = null;
      for (const fn of unauthorizedListeners) fn();
    }
    throw new ApiError(response.status, detailText(data, response));
  }
  return data;
}

export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
}

export function me() {
  return currentUser;
}

export async function login(username, password, totp) {
  const data = await api('POST', '/api/auth/login', { body: { username, password, totp } });
  csrfToken = data?.csrf_token ?? null;
  currentUser = data?.user ?? null;
  return currentUser;
}

/** The signed-in user, asking the server once per page load; null when signed out. */
export async function loadMe() {
  if (currentUser) return currentUser;
  try {
    const data = await api('GET', '/api/auth/me');
    csrfToken = data?.csrf_token ?? null;
    currentUser = data;
    return currentUser;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null;
    throw err;
  }
}

export async function logout() {
  try {
    await api('POST', '/api/auth/logout');
  } finally {
    currentUser = null;
    csrfToken = null;
  }
}
