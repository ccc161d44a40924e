// @ts-check
// The lab's critical-value dashboard (#/lab/dashboard): per site, how many critical
// values, the median time from result to notification and from notification to
// acknowledgement, and how many were acknowledged, escalated or are still open.
import { ApiError, api } from '../api.js';
import { h, replace } from '../dom.js';
import { labTabs } from './lab.js';
import { secondsText } from './lab_format.js';

const COLUMNS = ['Site', 'Critical values', 'Result → notification (median)', 'Notification → ack (median)', 'Acknowledged', 'Escalated', 'Open'];

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLabDashboard(root, { navigate, user }) {
  let disposed = false;
  const error = h('p', { class: 'error', role: 'alert', testid: 'lab-dashboard-error', hidden: true });
  const table = h('div', { class: 'table-wrap', testid: 'lab-dashboard' }, 'Loading…');
  root.append(labTabs('dashboard', user, navigate), h('section', { class: 'dashboard-page' },
    h('h2', {}, 'Critical values: result → notification → acknowledgement'), error, table));
  api('GET', '/api/lab/dashboard').then((data) => {
    if (disposed) return;
    const sites = Array.isArray(data?.sites) ? data.sites : [];
    replace(table, h('table', { class: 'worklist' },
      h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, sites.length ? sites.map((/** @type {Record<string, any>} */ s) => h('tr', { testid: 'lab-dashboard-site', dataset: { site: String(s.site_id ?? '') } },
        h('td', {}, String(s.site_id ?? '')), h('td', { class: 'num' }, String(s.count ?? 0)),
        h('td', { class: 'num', testid: 'lab-dashboard-notify' }, secondsText(s.median_result_to_notification_s)),
        h('td', { class: 'num', testid: 'lab-dashboard-ack' }, secondsText(s.median_notification_to_ack_s)),
        h('td', { class: 'num' }, String(s.acknowledged ?? 0)), h('td', { class: 'num' }, String(s.escalated ?? 0)),
        h('td', { class: 'num' }, String(s.open ?? 0))))
        : h('tr', {}, h('td', { colspan: String(COLUMNS.length), class: 'empty' }, 'No critical value in this period.')))));
  }).catch((err) => {
    if (disposed) return;
    replace(table);
    replace(error, err instanceof ApiError ? err.message : String(err));
    error.hidden = false;
  });
  return () => { disposed = true; };
}
