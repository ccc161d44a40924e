// @ts-check
// The API client against a stub fetch (fetch is its dependency, not the unit under test).
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, api, login } from '../src/api.js';

/** @param {number} status @param {unknown} body @param {string} [type] */
function reply(status, body, type = 'application/json') {
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status, headers: { 'content-type': type },
  });
}

afterEach(() => vi.unstubAllGlobals());

describe('api', () => {
  it('parses JSON and builds the query string without empty values', async () => {
    const fetch = vi.fn(async () => reply(200, { items: [1] }));
    vi.stubGlobal('fetch', fetch);
    const data = await api('GET', '/api/worklist', { query: { site: 'a b', empty: '', no: false, n: 0, u: null } });
    expect(data).toEqual({ items: [1] });
    const [url, init] = /** @type {any} */ (fetch.mock.calls[0]);
    expect(url).toBe('/api/worklist?site=a+b&n=0');
    expect(init.method).toBe('GET');
    expect(init.headers['X-CSRF-Token']).toBeUndefined();
  });

  it('returns null for 204', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response(null, { status: 204 })));
    expect(await api('DELETE', '/api/x')).toBeNull();
  });

  it("rejects with the server's detail, or a list of validation errors", async () => {
    vi.stubGlobal('fetch', vi.fn(async () => reply(409, { detail: 'already signed' })));
    await expect(api('POST', '/api/x', { body: {} })).rejects.toMatchObject({ status: 409, message: 'already signed' });
    vi.stubGlobal('fetch', vi.fn(async () => reply(422, { detail: [{ loc: ['body', 'fields', 'x'], msg: 'required' }] })));
    await expect(api('POST', '/api/x', { body: {} })).rejects.toMatchObject({ status: 422, message: 'fields.x: required' });
  });

  it('explains statuses without a detail, and an unreachable server', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => reply(503, 'down', 'text/plain')));
    await expect(api('GET', '/api/x')).rejects.toMatchObject({ status: 503, message: 'The server failed (503); try again shortly.' });
    vi.stubGlobal('fetch', vi.fn(async () => reply(404, null)));
    await expect(api('GET', '/api/x')).rejects.toMatchObject({ message: 'Not found (or not visible to you).' });
    vi.stubGlobal('fetch', vi.fn(async () => { throw new TypeError('network'); }));
    const err = await api('GET', '/api/x').catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(0);
  });

  it('sends the CSRF token from sign-in on state-changing requests only', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => reply(200, { csrf_token: 'tok-1', user: { username: 'dr' } })));
    await login('dr', 'pw', '123456');
    const fetch = vi.fn(async () => reply(200, {}));
    vi.stubGlobal('fetch', fetch);
    await api('POST', '/api/x', { body: { a: 1 } });
    await api('GET', '/api/x');
    const [, post] = /** @type {any} */ (fetch.mock.calls[0]);
    const [, get] = /** @type {any} */ (fetch.mock.calls[1]);
    expect(post.headers['X-CSRF-Token']).toBe('tok-1');
    expect(post.headers['Content-Type']).toBe('application/json');
    expect(post.body).toBe('{"a":1}');
    expect(get.headers['X-CSRF-Token']).toBeUndefined();
  });
});
