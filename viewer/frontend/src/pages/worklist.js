// @ts-check
import { ApiError, WAVEFORM_MODALITIES, api, ecgOfStudy } from '../api.js';
import { formatDate, formatDateTime, formatDuration, formatPersonName, h, replace } from '../dom.js';

const MODALITIES = ['', 'CT', 'MR', 'CR', 'DX', 'US', 'MG', 'PT', 'NM', 'XA', 'RF', 'ECG', 'SM'];
/** The API's status filter (viewer/worklist.py STATUSES): "open" is everything not signed. */
const STATUSES = ['open', 'all', 'unread', 'claimed', 'reported', 'signed'];
/** @type {Record<string, string>} */
const STATUS_LABELS = { open: 'Open (not signed)', all: 'All', unread: 'Unread', claimed: 'Claimed',
  reported: 'Reported', signed: 'Signed' };
const PAGE_SIZE = 50;
const COLUMNS = ['Priority', 'AI', 'Patient', 'Age/Sex', 'Site', 'Study', 'Accession', 'Body part',
  'Study date', 'Mod.', 'Img', 'Status', 'Due in', ''];
const REFRESH_MS = 30_000;
/** Roles that claim and report (viewer/worklist.py READER_ROLES); a site clerk only looks. */
const REPORTING_ROLES = ['radiologist', 'cardiologist', 'pathologist', 'lab_reviewer'];

/**
 * A worklist item or study as the API gives it (the fields read here; any others).
 * @typedef {Record<string, any>} Item
 */

/**
 * Worklist priorities (viewer/worklist.py): 9 STAT, 8 AI-critical, 7 urgent, else routine.
 * @param {Item | null | undefined} item
 */
export function priorityLabel(item) {
  if (item?.priority_label) return String(item.priority_label);
  const p = item?.priority;
  if (typeof p === 'string' && p.trim() && Number.isNaN(Number(p))) return p.toUpperCase();
  const n = Number(p) || 0;
  if (n >= 9) return 'STAT';
  if (n >= 8) return 'AI CRITICAL';
  return n >= 7 ? 'URGENT' : 'ROUTINE';
}

/**
 * The badge class of a priority label: prio-stat, prio-aicritical, prio-urgent, prio-routine.
 * @param {string} label
 */
export function priorityClass(label) {
  return `prio-${String(label).toLowerCase().replace(/[^a-z]/g, '')}`;
}

/**
 * "66y F": the patient's age at the study and sex, as the API gives them.
 * @param {Item | null | undefined} item
 */
export function ageSex(item) {
  return [item?.patient_age, item?.patient_sex].filter(Boolean).join(' ');
}

/**
 * Whether `user` claims and reports studies (a site clerk only looks).
 * @param {{ roles?: unknown } | null | undefined} user
 */
export function canReport(user) {
  const roles = user?.roles;
  return Array.isArray(roles) && roles.some((r) => REPORTING_ROLES.includes(r));
}

function loadFilters() {
  const defaults = { site: '', modality: '', status: 'open', mine: false, page: 1 };
  try {
    const stored = { ...defaults, ...JSON.parse(sessionStorage.getItem('rdc.worklist') ?? '{}') };
    if (!STATUSES.includes(stored.status)) stored.status = 'open'; // '' was "open" before
    return stored;
  } catch {
    return defaults;
  }
}

/**
 * @param {string} testid
 * @param {string[]} options
 * @param {string} value  the option selected
 * @param {(option: string) => string} labelFor
 */
function select(testid, options, value, labelFor) {
  return h('select', { testid },
    options.map((o) => h('option', { value: o, selected: o === value }, labelFor(o))));
}

/**
 * Options of the site filter: "All sites", then each site by name.
 * @param {HTMLSelectElement} control
 * @param {{ id: string, name?: string }[]} sites
 * @param {string} value  the site to select, if it is there
 */
function siteOptions(control, sites, value) {
  control.replaceChildren(h('option', { value: '' }, 'All sites'),
    ...sites.map((s) => h('option', { value: s.id, title: s.id }, s.name || s.id)));
  control.value = sites.some((s) => s.id === value) ? value : '';
  return control.value;
}

/**
 * Worklist: server-side paged and sorted (STAT, AI-critical, time left), filters, live
 * countdowns to due_at, claim/release and open. Returns a cleanup function.
 */
/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 */
export function renderWorklist(root, { navigate, user }) {
  const filters = loadFilters();
  const reporter = canReport(user);
  /** @type {ReturnType<typeof setInterval>[]} */
  const timers = [];
  /** @type {{ item: Item, dueMs: number, cell: HTMLElement, tr: HTMLElement }[]} */
  let rows = [];
  let loading = false;
  let again = false;

  // The sites this user may see, by name (GET /api/sites); until it answers, the ids of
  // the account's own sites.
  const siteControl = h('select', { testid: 'filter-site', 'aria-label': 'Site' });
  const ownSites = Array.isArray(user?.sites)
    ? user.sites.map((/** @type {unknown} */ s) => (typeof s === 'object' ? s : { id: String(s), name: String(s) })) : [];
  siteOptions(siteControl, ownSites, filters.site);
  if (filters.site && !ownSites.length) {
    siteControl.append(h('option', { value: filters.site }, filters.site));
    siteControl.value = filters.site;
  }
  const modality = select('filter-modality', MODALITIES, filters.modality, (m) => m || 'All modalities');
  const status = select('filter-status', STATUSES, filters.status, (s) => STATUS_LABELS[s] ?? s);
  const mine = h('input', { type: 'checkbox', testid: 'filter-mine', checked: filters.mine });
  const message = h('p', { class: 'error', role: 'alert', testid: 'worklist-error', hidden: true });
  const total = h('span', { class: 'muted', testid: 'worklist-total' });
  const prev = h('button', { class: 'btn', type: 'button', testid: 'worklist-prev' }, '‹ Prev');
  const next = h('button', { class: 'btn', type: 'button', testid: 'worklist-next' }, 'Next ›');
  const pageLabel = h('span', { class: 'muted', testid: 'worklist-page' });
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'worklist', testid: 'worklist-table' },
    h('thead', {}, h('tr', {},
      COLUMNS.map((t) => h('th', { scope: 'col' }, t)))),
    tbody,
  );

  function readFilters() {
    filters.site = siteControl.value;
    filters.modality = modality.value;
    filters.status = status.value;
    filters.mine = mine.checked;
  }
  function onFilterChange() {
    readFilters();
    filters.page = 1;
    load();
  }
  for (const el of [siteControl, modality, status, mine]) el.addEventListener('change', onFilterChange);
  prev.addEventListener('click', () => { filters.page = Math.max(1, filters.page - 1); load(); });
  next.addEventListener('click', () => { filters.page += 1; load(); });

  /** @param {string} text */
  function showError(text) {
    replace(message, text);
    message.hidden = !text;
  }

  /**
   * An ECG opens on the ECG screen (a cardiologist's); anything else in the viewer.
   * @param {Item} item
   */
  async function openItem(item) {
    const waveform = (item.modalities ?? []).some((/** @type {unknown} */ m) => WAVEFORM_MODALITIES.includes(String(m).toUpperCase()));
    if (waveform && (user?.roles ?? []).includes('cardiologist')) {
      try {
        const ecgId = await ecgOfStudy(item.study_id);
        if (ecgId !== null) {
          navigate(`#/ecg/${encodeURIComponent(ecgId)}`);
          return;
        }
      } catch (err) {
        console.warn('worklist: no ECG screen for this study', err);
      }
    }
    navigate(`#/study/${encodeURIComponent(item.study_id)}`);
  }

  /**
   * @param {Item} item
   * @param {'claim' | 'release'} action
   * @param {HTMLButtonElement} button
   */
  async function act(item, action, button) {
    button.disabled = true;
    try {
      await api('POST', `/api/studies/${encodeURIComponent(item.study_id)}/${action}`);
      await load();
    } catch (err) {
      showError(err instanceof ApiError ? err.message : String(err));
      button.disabled = false;
    }
  }

  /** @param {Item} item */
  function row(item) {
    const mineClaim = item.claimed_by && item.claimed_by === user?.username;
    const label = priorityLabel(item);
    const priority = label.toLowerCase().replace(/[^a-z]/g, '');
    const countdown = h('td', { class: 'countdown', testid: 'worklist-countdown' });
    const seconds = typeof item.seconds_left === 'number' ? item.seconds_left : null;
    const dueMs = item.status === 'signed' ? NaN // read: nothing is due any more
      : seconds !== null ? Date.now() + seconds * 1000
        : item.due_at ? Date.parse(item.due_at) : NaN;
    const open = h('button', {
      class: 'btn primary small', type: 'button', testid: 'worklist-open',
      onClick: () => openItem(item),
    }, 'Open');
    const actions = h('div', { class: 'actions' }, open);
    if (item.status === 'signed' && item.report_id !== null && item.report_id !== undefined) {
      // The signed report as the site received it (a site clerk's way to read it).
      actions.append(h('a', {
        class: 'btn small', href: `/api/reports/${encodeURIComponent(item.report_id)}/pdf`,
        target: '_blank', rel: 'noopener', testid: 'worklist-pdf', title: 'The signed report (PDF)',
      }, 'PDF'));
    }
    if (!reporter) {
      // A site clerk reads; claiming is for the readers.
    } else if (!item.claimed_by && item.status !== 'signed') {
      const b = h('button', { class: 'btn small', type: 'button', testid: 'worklist-claim' }, 'Claim');
      b.addEventListener('click', () => act(item, 'claim', b));
      actions.append(b);
    } else if (mineClaim) {
      const b = h('button', { class: 'btn small', type: 'button', testid: 'worklist-release' }, 'Release');
      b.addEventListener('click', () => act(item, 'release', b));
      actions.append(b);
    }
    const tr = h(
      'tr',
      {
        testid: 'worklist-row',
        dataset: { studyId: String(item.study_id), status: String(item.status ?? ''), priority },
        class: [item.ai_critical ? 'critical' : '', priority === 'stat' ? 'stat' : ''].join(' ').trim(),
      },
      h('td', {}, h('span', {
        class: `badge prio ${priorityClass(label)}`, testid: 'worklist-priority',
        title: `priority ${item.priority ?? ''}`,
      }, label)),
      h('td', {},
        item.ai_critical ? h('span', { class: 'badge crit', testid: 'worklist-ai-critical', title: 'AI flagged a critical finding' }, 'CRITICAL') : null,
        (item.ai_flags ?? []).length ? h('span', { class: 'flags' }, (item.ai_flags ?? []).join(', ')) : null),
      h('td', {}, h('div', { class: 'strong', testid: 'worklist-patient' }, formatPersonName(item.patient_name)),
        h('div', { class: 'muted small' }, item.patient_id ?? '')),
      h('td', { class: 'nowrap', testid: 'worklist-age-sex' }, ageSex(item) || '—'),
      h('td', {}, item.site_name || item.site_id || ''),
      h('td', { title: item.completed_at ? `complete ${formatDateTime(item.completed_at)}` : null },
        h('div', { testid: 'worklist-description' }, item.description ?? '')),
      h('td', { class: 'nowrap', testid: 'worklist-accession' }, item.accession_number || '—'),
      h('td', { testid: 'worklist-body-part' }, item.body_part || '—'),
      h('td', { class: 'nowrap', testid: 'worklist-study-date' }, formatDate(item.study_date) || '—'),
      h('td', {}, (item.modalities ?? []).join('/')),
      h('td', { class: 'num' }, item.instances ?? ''),
      h('td', {}, h('span', { class: `badge st-${String(item.status ?? '').replace(/[^a-z]/g, '')}`, testid: 'worklist-status' },
        item.status ?? ''), item.claimed_by ? h('div', { class: 'muted small' }, item.claimed_by) : null),
      countdown,
      h('td', {}, actions),
    );
    tr.addEventListener('dblclick', () => openItem(item));
    return { item, dueMs, cell: countdown, tr };
  }

  function tick() {
    const now = Date.now();
    for (const r of rows) {
      if (Number.isNaN(r.dueMs)) {
        if (!r.cell.textContent) r.cell.textContent = '—';
        continue;
      }
      const left = Math.round((r.dueMs - now) / 1000);
      r.cell.textContent = left < 0 ? `overdue ${formatDuration(left)}` : formatDuration(left);
      r.cell.classList.toggle('overdue', left < 0);
      r.cell.classList.toggle('soon', left >= 0 && left < 1800);
    }
  }

  async function load() {
    if (loading) {
      again = true; // filters changed while a page was on its way: ask once more after
      return;
    }
    loading = true;
    again = false;
    sessionStorage.setItem('rdc.worklist', JSON.stringify(filters));
    table.setAttribute('aria-busy', 'true');
    try {
      const data = await api('GET', '/api/worklist', {
        query: {
          site: filters.site, modality: filters.modality, status: filters.status,
          mine: filters.mine ? 1 : '', page: filters.page, page_size: PAGE_SIZE,
        },
      });
      showError('');
      const items = data?.items ?? [];
      rows = items.map(row);
      tbody.replaceChildren(...rows.map((r) => r.tr));
      if (!items.length) {
        tbody.append(h('tr', {}, h('td', { colspan: String(COLUMNS.length), class: 'empty', testid: 'worklist-empty' },
          'No studies match these filters.')));
      }
      const pageSize = data?.page_size || PAGE_SIZE;
      const pages = Math.max(1, Math.ceil((data?.total ?? 0) / pageSize));
      filters.page = data?.page ?? filters.page;
      replace(total, `${data?.total ?? 0} studies`);
      replace(pageLabel, `page ${filters.page} / ${pages}`);
      prev.disabled = filters.page <= 1;
      next.disabled = filters.page >= pages;
      tick();
    } catch (err) {
      showError(err instanceof ApiError ? err.message : String(err));
    } finally {
      loading = false;
      table.removeAttribute('aria-busy');
      if (again) load();
    }
  }

  root.append(
    h('section', { class: 'worklist-page' },
      h('div', { class: 'toolbar' },
        h('h2', {}, 'Worklist'),
        h('label', {}, 'Site ', siteControl),
        h('label', {}, 'Modality ', modality),
        h('label', {}, 'Status ', status),
        h('label', { class: 'check' }, mine, ' Assigned to me'),
        h('button', { class: 'btn', type: 'button', testid: 'worklist-refresh', onClick: () => load() }, 'Refresh'),
        h('span', { class: 'spacer' }),
        total),
      message,
      h('div', { class: 'table-wrap' }, table),
      h('div', { class: 'pager' }, prev, pageLabel, next)),
  );

  api('GET', '/api/sites').then((data) => {
    const list = Array.isArray(data?.sites) ? data.sites : [];
    const before = filters.site;
    filters.site = siteOptions(siteControl, list, filters.site);
    if (filters.site !== before) { filters.page = 1; load(); }
  }).catch((err) => console.warn('worklist: cannot list the sites', err));

  timers.push(setInterval(tick, 1000));
  timers.push(setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS));
  load();
  return () => timers.forEach(clearInterval);
}
