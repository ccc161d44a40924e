// @ts-check
// The one place that talks HTTP to the center's API (viewer/API_CONTRACT.md).
// Session cookie + X-CSRF-Token on every state-changing request.

/**
 * The signed-in user as /api/auth/me answers it (viewer/API_CONTRACT.md).
 * @typedef {{ id?: number, username: string, roles?: string[], [key: string]: any }} User
 */

/** @type {string | null} */
let csrfToken = null;
/** @type {User | null} */
let currentUser = null;
/** @type {Set<() => void>} */
const unauthorizedListeners = new Set();
/** Signs the same person in again over the page (main.js). @type {((username: string) => Promise<void>) | null} */
let reauthenticate = null;
/** @type {Promise<void> | null} */
let pendingReauth = null;
let lastRequestAt = 0;
let lastActivityAt = 0;
/** @type {ReturnType<typeof setInterval> | null} */
let keepaliveTimer = null;

/**
 * A number from localStorage (settings the browser tests shorten), else `fallback`.
 * @param {string} key
 * @param {number} fallback
 */
export function tuning(key, fallback, min = 500) {
  try {
    const value = Number(localStorage.getItem(key));
    return Number.isFinite(value) && value >= min ? value : fallback;
  } catch {
    return fallback;
  }
}

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status; 0 when the server could not be reached
   * @param {string} detail the message shown to the reader
   */
  constructor(status, detail) {
    super(detail);
    this.name = 'ApiError';
    this.status = status;
  }
}

/**
 * FastAPI's detail is a string, or a list of {loc, msg} for validation errors.
 * @param {any} data  the answer's JSON, if any
 * @param {Response} response
 */
function detailText(data, response) {
  const detail = data && typeof data === 'object' ? data.detail : null;
  if (typeof detail === 'string' && detail) return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((/** @type {any} */ d) => (d && typeof d === 'object' ? `${(d.loc ?? []).slice(1).join('.')}: ${d.msg}` : String(d)))
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
 * carrying the server's `detail` message.
 *
 * A 401 on anything but sign-in means the session has ended (idle, revoked). While
 * someone was signed in, a sign-in dialog opens over the page and, once the same person
 * has signed in again, the request is sent again: nothing typed on the page is lost.
 * Only if they give up are the listeners told (the app then shows the sign-in page).
 * `quiet`: a 401 is just an error (the first "who is signed in?" of a page load).
 *
 * @param {string} method
 * @param {string} path
 * @param {{ body?: unknown, query?: Record<string, unknown>, quiet?: boolean, retried?: boolean }} [options]
 * @returns {Promise<any>}
 */
export async function api(method, path, { body, query, quiet = false, retried = false } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '' && v !== false) params.set(k, String(v));
    }
    const qs = params.toString();
    if (qs) url += `?${qs}`;
  }
  /** @type {Record<string, string>} */
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
  if (response.status === 204) {
    lastRequestAt = Date.now();
    return null;
  }
  const type = response.headers.get('content-type') ?? '';
  const data = type.includes('json') ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const auth = path.startsWith('/api/auth/login') || path.startsWith('/api/auth/logout');
    if (response.status === 401 && !auth && !quiet) {
      const who = currentUser;
      if (who && reauthenticate && !retried) {
        try {
          await signInAgain(who);
        } catch {
          sessionEnded();
          throw new ApiError(401, detailText(data, response));
        }
        return api(method, path, { body, query, quiet, retried: true });
      }
      sessionEnded();
    }
    throw new ApiError(response.status, detailText(data, response));
  }
  lastRequestAt = Date.now();
  return data;
}

function sessionEnded() {
  currentUser = null;
  csrfToken = null;
  for (const fn of unauthorizedListeners) fn();
}

/**
 * One dialog for every request that found the session ended at the same time.
 * @param {User} user
 */
function signInAgain(user) {
  if (!pendingReauth) {
    const again = reauthenticate;
    pendingReauth = Promise.resolve()
      .then(() => again?.(user.username))
      .finally(() => { pendingReauth = null; });
  }
  return pendingReauth;
}

/**
 * How the app signs someone in again over the page (see api()).
 * @param {(username: string) => Promise<void>} fn
 */
export function setReauthenticate(fn) {
  reauthenticate = fn;
}

/** The reader is working (typing, clicking): keep the session from going idle. */
export function noteActivity() {
  lastActivityAt = Date.now();
}

/**
 * While the reader works on the page without the page asking the server anything (a
 * long report being typed), ask `GET /api/auth/me` now and then: every request
 * refreshes the session's idle timeout (viewer/sessions.py).
 */
export function startKeepalive() {
  if (keepaliveTimer) return;
  const every = tuning('rdc.keepaliveMs', 60_000);
  keepaliveTimer = setInterval(() => {
    if (!currentUser || pendingReauth) return;
    if (lastActivityAt > lastRequestAt && Date.now() - lastRequestAt >= every * 0.9) {
      api('GET', '/api/auth/me').catch(() => {});
    }
  }, every);
}

/**
 * The ECG analysis of a study, for opening it on the ECG screen; null if none
 * (not analysed yet, or the user is not a cardiologist).
 * @param {string | number} studyId
 * @returns {Promise<string | number | null>}
 */
export async function ecgOfStudy(studyId) {
  try {
    const data = await api('GET', '/api/ecg/queue', { query: { status: 'all', study_id: studyId, page_size: 1 } });
    return data?.items?.[0]?.id ?? null;
  } catch (err) {
    if (err instanceof ApiError && [403, 404, 422].includes(err.status)) return null;
    throw err;
  }
}

/** Series modalities that are waveforms, read on the ECG screen and never in the image viewer. */
export const WAVEFORM_MODALITIES = ['ECG', 'HD', 'EPS', 'RESP'];

/** @param {() => void} fn  called when the session has ended for good */
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
}

/** The signed-in user (null before sign-in or after sign-out). */
export function me() {
  return currentUser;
}

/**
 * @param {string} username
 * @param {string} password
 * @param {string} totp
 * @returns {Promise<User | null>}
 */
export async function login(username, password, totp) {
  const data = await api('POST', '/api/auth/login', { body: { username, password, totp } });
  csrfToken = data?.csrf_token ?? null;
  currentUser = data?.user ?? null;
  return currentUser;
}

/**
 * The signed-in user, asking the server once per page load; null when signed out.
 * @returns {Promise<User | null>}
 */
export async function loadMe() {
  if (currentUser) return currentUser;
  try {
    const data = await api('GET', '/api/auth/me', { quiet: true });
    csrfToken = data?.csrf_token ?? null;
    currentUser = data;
    return currentUser;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null;
    throw err;
  }
}

/** Saves a page started as it closed; signing out waits for them first. */
/** @type {Set<Promise<unknown>>} */
const pendingSaves = new Set();

/**
 * A save to wait for before signing out.
 * @param {Promise<unknown>} promise
 */
export function trackSave(promise) {
  /** @type {Promise<unknown>} */
  const tracked = Promise.resolve(promise).catch(() => {}).finally(() => pendingSaves.delete(tracked));
  pendingSaves.add(tracked);
}

/**
 * Sign out after the saves in flight have reached the server: a report page keeps a
 * local copy of unsent text only until the server has it, so on a shared workstation
 * nothing stays behind unless the server could not take it.
 */
export async function logout() {
  await Promise.all([...pendingSaves]);
  try {
    await api('POST', '/api/auth/logout');
  } finally {
    currentUser = null;
    csrfToken = null;
  }
}
