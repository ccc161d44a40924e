// @ts-check
// Turnaround dashboard: per site and modality, percentiles (minutes) of each stage
// interval over the last N days, as a table and as the server-drawn chart.
import { ApiError, api } from '../api.js';
import { h, replace } from '../dom.js';

const DAY_CHOICES = [7, 30, 90];
const DEFAULT_DAYS = 30;

function storedDays() {
  const n = Number(sessionStorage.getItem('rdc.dashboard.days'));
  return DAY_CHOICES.includes(n) ? n : DEFAULT_DAYS;
}

/** @param {unknown} value  minutes */
function minutes(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(1) : '—';
}

/**
 * "complete->signed" → "complete → signed"
 * @param {unknown} name
 */
function intervalLabel(name) {
  return String(name ?? '').replace(/->/g, ' \u2192 ').replace(/_/g, ' ');
}

/**
 * Dashboard page. Returns a cleanup function.
 * @param {HTMLElement} root
 */
export function renderDashboard(root) {
  let disposed = false;
  let seq = 0;
  let days = storedDays();

  const error = h('p', { class: 'error', role: 'alert', testid: 'dashboard-error', hidden: true });
  const daysSelect = h('select', { testid: 'dashboard-days', id: 'dashboard-days' },
    DAY_CHOICES.map((d) => h('option', { value: String(d), selected: d === days }, `Last ${d} days`)));
  const summary = h('span', { class: 'muted', testid: 'dashboard-summary' });
  const tbody = h('tbody');
  const table = h('table', { class: 'worklist dashboard-table', testid: 'dashboard-table' },
    h('thead', {}, h('tr', {},
      ['Site', 'Modality', 'Interval', 'Count', 'p50 (min)', 'p90 (min)', 'Max (min)'].map((t, i) =>
        h('th', { scope: 'col', class: i >= 3 ? 'num' : null }, t)))),
    tbody);
  const chartNote = h('p', { class: 'muted small', testid: 'dashboard-chart-error', hidden: true });
  const chart = h('img', {
    class: 'dashboard-chart', testid: 'dashboard-chart',
    alt: 'Median and 90th percentile of complete \u2192 signed, per site and modality',
  });
  chart.addEventListener('load', () => { chartNote.hidden = true; chart.hidden = false; });
  chart.addEventListener('error', () => {
    if (disposed || !chart.getAttribute('src')) return;
    chart.hidden = true;
    replace(chartNote, 'The chart could not be loaded.');
    chartNote.hidden = false;
  });

  /** @param {string | null | undefined} text */
  function showError(text) {
    replace(error, text ?? '');
    error.hidden = !text;
  }

  /** @param {Record<string, any>} r  a row of /api/dashboard/turnaround */
  function row(r) {
    return h('tr', { testid: 'dashboard-row', dataset: { site: String(r.site_id ?? ''), interval: String(r.interval ?? '') } },
      h('td', {}, r.site_id ?? ''),
      h('td', {}, r.modality ?? ''),
      h('td', {}, intervalLabel(r.interval)),
      h('td', { class: 'num' }, r.count ?? ''),
      h('td', { class: 'num' }, minutes(r.p50_min)),
      h('td', { class: 'num' }, minutes(r.p90_min)),
      h('td', { class: 'num' }, minutes(r.max_min)));
  }

  async function load({ fresh = false } = {}) {
    const mine = ++seq;
    sessionStorage.setItem('rdc.dashboard.days', String(days));
    // Same-origin image: the session cookie authenticates it (img-src 'self'). An explicit
    // refresh adds a throw-away parameter, as setting the same src does not fetch again.
    chart.src = `/api/dashboard/turnaround.png?days=${encodeURIComponent(days)}`
      + (fresh ? `&_=${Date.now()}` : '');
    table.setAttribute('aria-busy', 'true');
    try {
      const data = await api('GET', '/api/dashboard/turnaround', { query: { days } });
      if (disposed || mine !== seq) return;
      showError('');
      const rows = Array.isArray(data?.rows) ? data.rows : [];
      tbody.replaceChildren(...rows.map(row));
      if (!rows.length) {
        tbody.append(h('tr', {}, h('td', { colspan: '7', class: 'empty', testid: 'dashboard-empty' },
          'No studies in this period.')));
      }
      replace(summary, `${rows.length} rows, last ${data?.days ?? days} days`);
    } catch (err) {
      if (!disposed && mine === seq) showError(err instanceof ApiError ? err.message : String(err));
    } finally {
      if (mine === seq) table.removeAttribute('aria-busy');
    }
  }

  daysSelect.addEventListener('change', () => {
    days = Number(daysSelect.value) || DEFAULT_DAYS;
    load();
  });

  root.append(
    h('section', { class: 'dashboard-page' },
      h('div', { class: 'toolbar' },
        h('h2', {}, 'Turnaround'),
        h('label', { for: 'dashboard-days' }, 'Period '), daysSelect,
        h('button', { class: 'btn', type: 'button', testid: 'dashboard-refresh', onClick: () => load({ fresh: true }) }, 'Refresh'),
        h('span', { class: 'spacer' }),
        summary),
      error,
      h('div', { class: 'dashboard-grid' },
        h('div', { class: 'table-wrap' }, table),
        h('figure', { class: 'panel chart-box' }, chart, chartNote,
          h('figcaption', { class: 'muted small' }, 'complete \u2192 signed: median and 90th percentile (minutes)')))),
  );
  load();
  return () => {
    disposed = true;
    chart.removeAttribute('src');
  };
}
