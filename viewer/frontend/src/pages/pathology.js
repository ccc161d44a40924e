// @ts-check
// The pathology case worklist (#/pathology): cases as the server sorts them (frozen
// sections first, then STAT, then by due time), filters by site, stain, organ and "mine",
// claim (a 409 names who holds the case), QC failures marked. Also the sub-navigation of
// the pathology area.
import { ApiError, api } from '../api.js';
import { formatDateTime, formatDuration, formatPersonName, h, replace } from '../dom.js';
import { canClaim, casePath, hasAnyRole, isPathologist, qcText, urgencyBadge } from './pathology_format.js';

/** @typedef {Record<string, any>} CaseItem */

const REFRESH_MS = 30_000;
const STAINS = ['', 'H&E', 'IHC', 'PAS', 'Giemsa', 'Trichrome', 'Reticulin'];
const COLUMNS = ['Urgency', 'Accession', 'Patient', 'Organ', 'Site', 'Stains', 'Slides', 'QC', 'State', 'Due in', ''];

/**
 * The pathology area's tabs: cases; second opinions for pathologists; the dashboard
 * for pathologists and admins (what the API lets each see).
 * @param {string} current  'cases' | 'consults' | 'dashboard'
 * @param {{ roles?: unknown } | null | undefined} user
 */
export function pathologyTabs(current, user) {
  const tab = (/** @type {string} */ name, /** @type {string} */ href, /** @type {string} */ label) => h('a', {
    href, testid: `pathology-tab-${name}`, class: current === name ? 'active' : null,
    'aria-current': current === name ? 'page' : null,
  }, label);
  return h('nav', { class: 'subnav', 'aria-label': 'Pathology' },
    tab('cases', '#/pathology', 'Cases'),
    isPathologist(user) ? tab('consults', '#/pathology/consults', 'Second opinions') : null,
    hasAnyRole(user, ['pathologist', 'admin']) ? tab('dashboard', '#/pathology/dashboard', 'Dashboard') : null);
}

/** @returns {{ site: string, stain: string, organ: string, mine: boolean, status: string }} */
function loadFilters() {
  const defaults = { site: '', stain: '', organ: '', mine: false, status: 'open' };
  try {
    return { ...defaults, ...JSON.parse(sessionStorage.getItem('rdc.pathology') ?? '{}') };
  } catch {
    return defaults;
  }
}

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderPathologyWorklist(root, { navigate, user }) {
  const filters = loadFilters();
  const pathologist = isPathologist(user);
  /** @type {{ dueMs: number, cell: HTMLElement }[]} */
  let rows = [];
  let disposed = false;

  const site = h('select', { testid: 'path-filter-site', 'aria-label': 'Site' }, h('option', { value: '' }, 'All sites'));
  if (filters.site) {
    site.append(h('option', { value: filters.site }, filters.site));
    site.value = filters.site;
  }
  const stain = h('select', { testid: 'path-filter-stain', 'aria-label': 'Stain' },
    STAINS.map((s) => h('option', { value: s, selected: s === filters.stain }, s || 'All stains')));
  const organ = h('input', { type: 'search', testid: 'path-filter-organ', placeholder: 'Organ', value: filters.organ, size: 10 });
  const mine = h('input', { type: 'checkbox', testid: 'path-filter-mine', checked: filters.mine });
  const status = h('select', { testid: 'path-filter-status', 'aria-label': 'Status' },
    h('option', { value: 'open', selected: filters.status === 'open' }, 'Open'),
    h('option', { value: 'all', selected: filters.status === 'all' }, 'All'));
  const message = h('p', { class: 'error', role: 'alert', testid: 'path-worklist-error', hidden: true });
  const total = h('span', { class: 'muted', testid: 'path-worklist-total' });
  const tbody = h('tbody');
  const table = h('table', { class: 'worklist pathology-worklist', testid: 'path-worklist-table' },
    h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', { scope: 'col' }, c)))), tbody);

  /** @param {string} text */
  function showError(text) {
    replace(message, text);
    message.hidden = !text;
  }

  /**
   * @param {CaseItem} item
   * @param {'claim' | 'release'} action
   * @param {HTMLButtonElement} button
   */
  async function act(item, action, button) {
    button.disabled = true;
    try {
      await api('POST', `/api/pathology/cases/${encodeURIComponent(item.id)}/${action}`);
      showError('');
      await load();
    } catch (err) {
      // 409: the server names who is reading the case.
      showError(err instanceof ApiError ? err.message : String(err));
      button.disabled = false;
      await load();
    }
  }

  /** @param {CaseItem} item */
  function row(item) {
    const badge = urgencyBadge(item.urgency);
    const qcFailed = item.qc === 'fail';
    const countdown = h('td', { class: 'countdown', testid: 'path-countdown' });
    const dueMs = item.due_at && !['signed', 'amended'].includes(item.state) ? Date.parse(item.due_at) : NaN;
    const actions = h('div', { class: 'actions' },
      h('button', {
        class: 'btn primary small', type: 'button', testid: 'path-open',
        onClick: () => navigate(casePath(item.id)),
      }, 'Open'));
    if (canClaim(user, item)) {
      const b = h('button', { class: 'btn small', type: 'button', testid: 'path-claim' }, 'Claim');
      b.addEventListener('click', () => act(item, 'claim', b));
      actions.append(b);
    } else if (pathologist && item.mine) {
      const b = h('button', { class: 'btn small', type: 'button', testid: 'path-release' }, 'Release');
      b.addEventListener('click', () => act(item, 'release', b));
      actions.append(b);
    }
    const tr = h('tr', {
      testid: 'path-row',
      dataset: { caseId: String(item.id), urgency: String(item.urgency ?? ''), state: String(item.state ?? ''), qc: String(item.qc ?? '') },
      class: [item.urgency === 'frozen' || item.urgency === 'stat' ? 'stat' : '', qcFailed ? 'qc-failed' : ''].join(' ').trim(),
    },
    h('td', {}, h('span', { class: `badge ${badge.cls}`, testid: 'path-urgency' }, badge.label)),
    h('td', { class: 'nowrap strong', testid: 'path-accession' }, item.accession_number ?? ''),
    h('td', {}, h('div', {}, formatPersonName(item.patient_name)), h('div', { class: 'muted small' }, item.patient_id ?? '')),
    h('td', {}, item.organ || '—'),
    h('td', {}, item.site_id ?? ''),
    h('td', {}, (item.stains ?? []).join(', ')),
    h('td', { class: 'num' }, item.slide_count ?? ''),
    h('td', {}, h('span', { class: `badge qc-${String(item.qc ?? 'pending').replace(/[^a-z]/g, '')}`, testid: 'path-qc' }, qcText(item))),
    h('td', {},
      h('span', { class: 'badge', testid: 'path-state' }, item.state ?? ''),
      item.consult_open ? h('span', { class: 'badge consult', title: 'A second opinion is open' }, '2nd') : null,
      item.assigned_name ? h('div', { class: 'muted small', testid: 'path-holder' }, item.assigned_name) : null),
    countdown,
    h('td', {}, actions));
    tr.addEventListener('dblclick', () => navigate(casePath(item.id)));
    rows.push({ dueMs, cell: countdown });
    return tr;
  }

  function tick() {
    const now = Date.now();
    for (const r of rows) {
      if (Number.isNaN(r.dueMs)) {
        r.cell.textContent = '—';
        continue;
      }
      const left = Math.round((r.dueMs - now) / 1000);
      r.cell.textContent = left < 0 ? `overdue ${formatDuration(left)}` : formatDuration(left);
      r.cell.classList.toggle('overdue', left < 0);
      r.cell.classList.toggle('soon', left >= 0 && left < 1800);
    }
  }

  async function load() {
    filters.site = site.value;
    filters.stain = stain.value;
    filters.organ = organ.value.trim();
    filters.mine = mine.checked;
    filters.status = status.value;
    sessionStorage.setItem('rdc.pathology', JSON.stringify(filters));
    table.setAttribute('aria-busy', 'true');
    try {
      const data = await api('GET', '/api/pathology/cases', {
        query: { site: filters.site, stain: filters.stain, organ: filters.organ, mine: filters.mine ? 'true' : '', status: filters.status },
      });
      if (disposed) return;
      /** @type {CaseItem[]} */
      const cases = Array.isArray(data?.cases) ? data.cases : [];
      rows = [];
      tbody.replaceChildren(...cases.map(row));
      if (!cases.length) {
        tbody.append(h('tr', {}, h('td', { colspan: String(COLUMNS.length), class: 'empty', testid: 'path-empty' }, 'No cases match these filters.')));
      }
      replace(total, `${cases.length} case${cases.length === 1 ? '' : 's'}`);
      root.dataset.loadedAt = formatDateTime(new Date());
      tick();
    } catch (err) {
      showError(err instanceof ApiError ? err.message : String(err));
    } finally {
      table.removeAttribute('aria-busy');
    }
  }

  for (const el of [site, stain, mine, status]) el.addEventListener('change', () => load());
  organ.addEventListener('change', () => load());

  root.append(pathologyTabs('cases', user), h('section', { class: 'worklist-page' },
    h('div', { class: 'toolbar' },
      h('h2', {}, 'Pathology cases'),
      h('label', {}, 'Site ', site),
      h('label', {}, 'Stain ', stain),
      h('label', {}, 'Organ ', organ),
      h('label', {}, 'Status ', status),
      pathologist ? h('label', { class: 'check' }, mine, ' Mine') : null,
      h('button', { class: 'btn', type: 'button', testid: 'path-refresh', onClick: () => load() }, 'Refresh'),
      h('span', { class: 'spacer' }),
      total),
    message,
    h('div', { class: 'table-wrap' }, table)));

  api('GET', '/api/sites').then((data) => {
    const list = Array.isArray(data?.sites) ? data.sites : [];
    const before = site.value;
    site.replaceChildren(h('option', { value: '' }, 'All sites'),
      ...list.map((/** @type {{ id: string, name?: string }} */ s) => h('option', { value: s.id }, s.name || s.id)));
    site.value = list.some((/** @type {{ id: string }} */ s) => s.id === before) ? before : '';
    if (site.value !== before) load();
  }).catch((err) => console.warn('pathology: cannot list the sites', err));

  const timers = [setInterval(tick, 1000), setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS)];
  load();
  return () => {
    disposed = true;
    timers.forEach(clearInterval);
  };
}
