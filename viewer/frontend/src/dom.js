// @ts-check
// Tiny DOM builder. Every piece of data goes in as a text node or a property, never as
// HTML: patient names, descriptions and API messages may contain markup.

/** What h(), append() and replace() take as children (globals.d.ts). @typedef {DomChild} Child */

/**
 * Create an element.
 * props: class, testid (→ data-testid), dataset, on<Event> handlers, DOM properties
 * given as non-strings (checked, disabled, value...), anything else as an attribute.
 * children: nodes, strings/numbers (→ text nodes), arrays, null/false (skipped).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, any> | null} [props]
 * @param {...Child} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'value' || key === 'checked' || key === 'disabled' || key === 'hidden') {
      /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (el))[key] = value;
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/**
 * Append `children` (see Child) to `parent`, text as text nodes.
 * @template {ParentNode} P
 * @param {P} parent
 * @param {readonly Child[]} children
 * @returns {P}
 */
export function append(parent, children) {
  for (const child of /** @type {unknown[]} */ (children).flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/**
 * Replace all children of `el` with `children` (text-safe).
 * @template {ParentNode} E
 * @param {E} el
 * @param {...Child} children
 * @returns {E}
 */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/**
 * "1h 02m 03s" / "2d 03h" / "45s"; negative values read as overdue.
 * @param {number} seconds
 */
export function formatDuration(seconds) {
  const s = Math.abs(Math.trunc(seconds));
  const d = Math.floor(s / 86400);
  const hr = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const p = (/** @type {number} */ n) => String(n).padStart(2, '0');
  if (d > 0) return `${d}d ${p(hr)}h ${p(m)}m`;
  if (hr > 0) return `${hr}h ${p(m)}m ${p(sec)}s`;
  if (m > 0) return `${m}m ${p(sec)}s`;
  return `${sec}s`;
}

/**
 * A timestamp in the browser's locale ('' for none; as given when it is no date).
 * @param {string | number | Date | null | undefined} value
 */
export function formatDateTime(value) {
  if (!value) return '';
  const t = new Date(value);
  return Number.isNaN(t.getTime()) ? String(value) : t.toLocaleString();
}

/**
 * A DICOM DA (YYYYMMDD) or ISO date as a readable date.
 * @param {unknown} value
 */
export function formatDate(value) {
  if (!value) return '';
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(String(value));
  return m ? `${m[1]}-${m[2]}-${m[3]}` : String(value);
}

/**
 * DICOM PN "Family^Given^Middle" as "Family, Given Middle".
 * @param {unknown} value  a string, or DICOM JSON's {Alphabetic: ...}
 */
export function formatPersonName(value) {
  if (!value) return '';
  const text = typeof value === 'object'
    ? String(/** @type {{ Alphabetic?: unknown }} */ (value).Alphabetic ?? '') : String(value);
  const [family = '', given = '', middle = ''] = text.split('^');
  const rest = [given, middle].filter(Boolean).join(' ');
  return rest ? `${family}, ${rest}` : family;
}

/**
 * A snake_case or kebab-case key as words with a capital ("site_name" → "Site name").
 * @param {unknown} key
 */
export function humanize(key) {
  const text = String(key).replace(/[_-]+/g, ' ').trim();
  return text.charAt(0).toUpperCase() + text.slice(1);
}
