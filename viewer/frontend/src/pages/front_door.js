// @ts-check
// The DICOM front door (admin role): instances the gateway acknowledged to a county site
// but the archive (Orthanc) refused, the spool folders, and per-site counts
// (GET /api/admin/front-door, viewer/front_door_api.py). No patient data: sites, receipts
// and UIDs only. Every value goes in as text (dom.js h()).
import { ApiError, api } from '../api.js';
import { formatDateTime, h, replace } from '../dom.js';

/** @param {unknown} err */
function message(err) {
  return err instanceof ApiError ? err.message : String(/** @type {{ message?: unknown } | null} */ (err)?.message ?? err);
}

/** What each spool folder means to an operator. */
const SPOOL_FOLDERS = [
  ['ready', 'waiting for the archive'],
  ['failed', 'refused by the archive after acknowledgement; kept for a look'],
  ['unacknowledged', 'found after a crash with no receipt; never acknowledged to the sender'],
];

/** @param {unknown} value  a count; anything else counts as 0 */
function num(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

/**
 * Front door page. Returns a cleanup function.
 * @param {HTMLElement} root
 */
export function renderFrontDoor(root) {
  let disposed = false;
  const error = h('p', { class: 'error', role: 'alert', testid: 'front-door-error', hidden: true });
  const checked = h('span', { class: 'muted small', testid: 'front-door-checked' });
  const summary = h('div', { class: 'panel front-door-summary', testid: 'front-door-summary' });
  const failedBody = h('tbody');
  const failedTable = h('table', { class: 'worklist front-door-failed', testid: 'front-door-failed' },
    h('thead', {}, h('tr', {},
      ['Received', 'Site', 'Study UID', 'SOP instance UID', 'Receipt', 'Archive said', 'File']
        .map((t) => h('th', { scope: 'col' }, t)))),
    failedBody);
  const sitesBody = h('tbody');
  const sitesTable = h('table', { class: 'worklist front-door-sites', testid: 'front-door-sites' },
    h('thead', {}, h('tr', {},
      ['Site', 'Name', 'Received', 'Spooled', 'In archive', 'Failed']
        .map((t, i) => h('th', { scope: 'col', class: i >= 2 ? 'num' : null }, t)))),
    sitesBody);
  const unacked = h('ul', { class: 'muted small', testid: 'front-door-unacknowledged' });

  /** @param {string | null | undefined} text */
  function showError(text) {
    replace(error, text ?? '');
    error.hidden = !text;
  }

  /** @param {Record<string, any>} f  an item of `failed` */
  function failedRow(f) {
    return h('tr', { testid: 'front-door-failed-row', dataset: { receipt: String(f.receipt_id ?? '') } },
      h('td', { class: 'nowrap' }, formatDateTime(f.received_at)),
      h('td', {}, f.site_id ?? ''),
      h('td', { class: 'small' }, f.study_uid ?? ''),
      h('td', { class: 'small', testid: 'front-door-failed-sop' }, f.sop_instance_uid ?? ''),
      h('td', { class: 'small' }, f.receipt_id ?? ''),
      h('td', { testid: 'front-door-failed-error' }, f.error ?? ''),
      h('td', {}, f.file_kept ? 'in spool/failed' : 'missing'));
  }

  /** @param {Record<string, any>} s  an item of `sites` */
  function siteRow(s) {
    return h('tr', { class: s.enabled ? '' : 'inactive' },
      h('td', { class: 'strong' }, s.site_id ?? ''),
      h('td', {}, s.name ?? ''),
      h('td', { class: 'num' }, String(num(s.received))),
      h('td', { class: 'num' }, String(num(s.spooled))),
      h('td', { class: 'num' }, String(num(s.stored))),
      h('td', { class: 'num' }, h('span', { class: num(s.failed) ? 'badge ds-failed' : '' }, String(num(s.failed)))));
  }

  /** @param {Record<string, any> | null} data  /api/admin/front-door's answer */
  function show(data) {
    const total = num(data?.failed_total);
    const spool = data?.spool ?? {};
    const failed = Array.isArray(data?.failed) ? data.failed : [];
    replace(summary,
      h('p', {},
        h('span', { class: `badge ${total ? 'ds-failed' : 'ds-sent'}`, testid: 'front-door-failed-total' },
          String(total)),
        ' acknowledged to a site but not archived',
        total > failed.length ? ` (newest ${failed.length} shown)` : ''),
      total ? h('p', { class: 'warning' },
        'The sending site believes these were delivered. Ask it to send them again; the refused files '
        + 'are kept in the spool\u2019s failed folder. They never count towards a study\u2019s completeness.') : null,
      h('ul', { class: 'spool-counts' },
        SPOOL_FOLDERS.map(([name, meaning]) => h('li', { testid: `front-door-spool-${name}` },
          h('span', { class: `badge ${num(spool[name]) && name !== 'ready' ? 'ds-failed' : ''}` },
            `${name} ${num(spool[name])}`),
          ` ${meaning}`))));
    failedBody.replaceChildren(...failed.map(failedRow));
    if (!failed.length) {
      failedBody.append(h('tr', {}, h('td', { colspan: '7', class: 'empty' },
        'Every acknowledged instance reached the archive.')));
    }
    const sites = Array.isArray(data?.sites) ? data.sites : [];
    sitesBody.replaceChildren(...sites.map(siteRow));
    if (!sites.length) sitesBody.append(h('tr', {}, h('td', { colspan: '6', class: 'empty' }, 'No sites yet.')));
    const files = Array.isArray(data?.unacknowledged_files) ? data.unacknowledged_files : [];
    unacked.replaceChildren(...files.map((/** @type {Record<string, any>} */ f) => h('li', {},
      `${f.name} (${num(f.size_bytes)} bytes, ${formatDateTime(f.modified_at)})`)));
    if (!files.length) unacked.append(h('li', {}, 'None.'));
    replace(checked, data?.checked_at ? `checked ${formatDateTime(data.checked_at)}` : '');
  }

  async function load() {
    failedTable.setAttribute('aria-busy', 'true');
    showError('');
    try {
      const data = await api('GET', '/api/admin/front-door');
      if (!disposed) show(data);
    } catch (err) {
      if (!disposed) showError(message(err));
    } finally {
      failedTable.removeAttribute('aria-busy');
    }
  }

  root.append(
    h('section', { class: 'admin-page front-door-page', testid: 'front-door-page' },
      h('div', { class: 'toolbar' },
        h('h2', {}, 'DICOM front door'),
        h('button', { class: 'btn', type: 'button', testid: 'front-door-refresh', onClick: () => load() }, 'Refresh'),
        checked),
      error,
      summary,
      h('h3', {}, 'Acknowledged but not archived'),
      h('div', { class: 'table-wrap' }, failedTable),
      h('h3', {}, 'Per site'),
      h('div', { class: 'table-wrap' }, sitesTable),
      h('h3', {}, 'Unacknowledged spool files'),
      unacked),
  );
  load();
  return () => {
    disposed = true;
  };
}
