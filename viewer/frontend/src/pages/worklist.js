import { ApiError, WAVEFORM_MODALITIES, api, ecgOfStudy } from '../api.js';
import { formatDateTime, formatDuration, formatPersonName, h, replace } from '../dom.js';

const MODALITIES = ['', 'CT', 'MR', 'CR', 'DX', 'US', 'MG', 'PT', 'NM', 'XA', 'RF', 'ECG', 'SM'];
const STATUSES = ['', 'unread', 'claimed', 'reported', 'signed'];
const PAGE_SIZE = 50;
const REFRESH_MS = 30_000;

function loadFilters() {
  try {
    return { site: '', modality: '', status: '', mine: false, page: 1,
      ...JSON.parse(sessionStorage.getItem('rdc.worklist') ?? '{}') };
  } catch {
    return { site: '', modality: '', status: '', mine: false, page: 1 };
  }
}

function select(testid, options, value, labelFor) {
  return h('select', { testid },
    options.map((o) => h('option', { value: o, selected: o === value }, labelFor(o))));
}

/**
 * Worklist: server-side paged and sorted (STAT, AI-critical, time left), filters, live
 * countdowns to due_at, claim/release and open. Returns a cleanup function.
 */
export function renderWorklist(root, { navigate, user }) {
  const filters = loadFilters();
  const timers = [];
  let rows = []; // [{item, dueMs, cell}]
  let loading = false;

  const sites = Array.isArray(user?.sites) ? user.sites : null;
  const siteControl = sites
    ? select('filter-site', ['', ...sites.map((s) => (typeof s === 'object' ? s.id : s))], filters.site,
      (s) => s || 'All sites')
    : h('input', { testid: 'filter-site', placeholder: 'All sites', value: filters.site, size: '12' });
  const modality = select('filter-modality', MODALITIES, filters.modality, (m) => m || 'All modalities');
  const status = select('filter-status', STATUSES, filters.status, (s) => s || 'Any status');
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
      ['Priority', 'AI', 'Patient', 'Site', 'Study', 'Mod.', 'Img', 'Status', 'Due in', ''].map(
        (t) => h('th', { scope: 'col' }, t)))),
    tbody,
  );

  function readFilters() {
    filters.site = siteControl.value.trim();
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

  function showError(text) {
    replace(message, text);
    message.hidden = !text;
  }

  /** An ECG opens on the ECG screen (a cardiologist's); anything else in the viewer. */
  async function openItem(item) {
    const waveform = (item.modalities ?? []).some((m) => WAVEFORM_MODALITIES.includes(String(m).toUpperCase()));
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

  function row(item) {
    const mineClaim = item.claimed_by && item.claimed_by === user?.username;
    const priority = String(item.priority ?? '').toLowerCase();
    const countdown = h('td', { class: 'countdown', testid: 'worklist-countdown' });
    const seconds = typeof item.seconds_left === 'number' ? item.seconds_left : null;
    const dueMs = seconds !== null ? Date.now() + seconds * 1000
      : item.due_at ? Date.parse(item.due_at) : NaN;
    const open = h('button', {
      class: 'btn primary small', type: 'button', testid: 'worklist-open',
      onClick: () => openItem(item),
    }, 'Open');
    const actions = h('div', { class: 'actions' }, open);
    if (!item.claimed_by && item.status !== 'signed') {
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
      h('td', {}, h('span', { class: `badge prio prio-${priority.replace(/[^a-z]/g, '')}`, testid: 'worklist-priority' },
        String(item.priority ?? '').toUpperCase())),
      h('td', {},
        item.ai_critical ? h('span', { class: 'badge crit', testid: 'worklist-ai-critical', title: 'AI flagged a critical finding' }, 'CRITICAL') : null,
        (item.ai_flags ?? []).length ? h('span', { class: 'flags' }, (item.ai_flags ?? []).join(', ')) : null),
      h('td', {}, h('div', { class: 'strong', testid: 'worklist-patient' }, formatPersonName(item.patient_name)),
        h('div', { class: 'muted small' }, item.patient_id ?? '')),
      h('td', {}, item.site_name || item.site_id || ''),
      h('td', {}, h('div', {}, item.description ?? ''),
        h('div', { class: 'muted small' }, formatDateTime(item.completed_at))),
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
    if (loading) return;
    loading = true;
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
        tbody.append(h('tr', {}, h('td', { colspan: '10', class: 'empty', testid: 'worklist-empty' },
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

  timers.push(setInterval(tick, 1000));
  timers.push(setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS));
  load();
  return () => timers.forEach(clearInterval);
}
