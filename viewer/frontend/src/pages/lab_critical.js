// @ts-check
// Critical values (#/lab/critical): the notices of the account's sites, open ones first,
// each with the value, when it was known and told, its escalation tier; an open one
// takes the acknowledgement with read-back: who took it, and the value as they repeated
// it. The server checks the read-back against the value (a mismatch is refused and
// audited); the page checks it first, to say so before anything is sent.
import { ApiError, api } from '../api.js';
import { formatDateTime, formatPersonName, h, replace } from '../dom.js';
import { labTabs } from './lab.js';
import { noticeBadge, readbackProblem, valueText } from './lab_format.js';

const REFRESH_MS = 15_000;

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLabCritical(root, { navigate, user }) {
  let disposed = false;
  const error = h('p', { class: 'error', role: 'alert', testid: 'lab-critical-error', hidden: true });
  const status = h('p', { class: 'muted', role: 'status', testid: 'lab-critical-status' });
  const list = h('div', { class: 'table-wrap', testid: 'lab-critical-list' }, 'Loading…');
  root.append(labTabs('critical', user, navigate), h('section', { class: 'worklist-page' },
    h('h2', {}, 'Critical values'), error, status, list));

  /** @param {string} text */
  function showError(text) {
    replace(error, text);
    error.hidden = !text;
  }

  /** @param {Record<string, any>} n */
  function ackForm(n) {
    const name = h('input', { type: 'text', testid: 'lab-ack-name', placeholder: 'Your name', required: true, size: 16, 'aria-label': 'Name' });
    const readback = h('input', { type: 'text', testid: 'lab-ack-readback', placeholder: 'Value read back', required: true, size: 10, 'aria-label': 'Value read back' });
    const submit = h('button', { class: 'btn small primary', type: 'submit', testid: 'lab-ack-submit' }, 'Acknowledge');
    const problem = h('span', { class: 'error small', testid: 'lab-ack-problem' });
    const form = h('form', { class: 'inline', testid: 'lab-ack-form', dataset: { noticeId: String(n.id) } },
      name, readback, submit, problem);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const why = !name.value.trim() ? 'Who took the value?' : readbackProblem(readback.value, n.value_text || n.value);
      replace(problem, why);
      if (why) return;
      submit.disabled = true;
      try {
        await api('POST', `/api/lab/critical/${encodeURIComponent(n.id)}/ack`,
          { body: { name: name.value.trim(), readback: readback.value.trim() } });
        replace(status, `Acknowledged: ${n.test_code ?? ''} ${valueText(n)} for ${formatPersonName(n.patient_name) || n.patient_id || ''}`);
        showError('');
        await load();
      } catch (err) {
        replace(problem, err instanceof ApiError ? err.message : String(err));
        submit.disabled = false;
      }
    });
    return form;
  }

  /** @param {Record<string, any>} n */
  function row(n) {
    const badge = noticeBadge(n);
    const open = n.state !== 'acknowledged';
    return h('tr', { testid: 'lab-notice', class: open ? 'critical' : null, dataset: { noticeId: String(n.id), state: String(n.state ?? ''), resultId: String(n.result_id ?? '') } },
      h('td', {}, h('span', { class: badge.cls, testid: 'lab-notice-state' }, badge.label)),
      h('td', { testid: 'lab-notice-test' }, String(n.test_code ?? '')),
      h('td', { class: 'num', testid: 'lab-notice-value' }, valueText(n), n.flag ? ` ${n.flag}` : ''),
      h('td', {}, formatPersonName(n.patient_name), h('div', { class: 'muted small' }, `${n.patient_id ?? ''} · ${n.site_id ?? ''}`)),
      h('td', { class: 'small' }, formatDateTime(n.result_at)),
      h('td', { class: 'small' }, formatDateTime(n.notified_at)),
      h('td', {}, open ? ackForm(n)
        : h('span', { testid: 'lab-notice-ack' }, `${n.ack_name ?? ''} read back ${n.ack_readback ?? ''}, ${formatDateTime(n.ack_at)}`)));
  }

  async function load() {
    try {
      const data = await api('GET', '/api/lab/critical');
      if (disposed) return;
      const rows = Array.isArray(data?.notices) ? [...data.notices] : [];
      rows.sort((a, b) => Number(b.state !== 'acknowledged') - Number(a.state !== 'acknowledged')
        || Date.parse(String(b.result_at ?? '')) - Date.parse(String(a.result_at ?? '')));
      replace(list, h('table', { class: 'worklist', testid: 'lab-critical-table' },
        h('thead', {}, h('tr', {}, ['State', 'Test', 'Value', 'Patient', 'Result at', 'Notified', 'Acknowledgement'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, rows.length ? rows.map(row)
          : h('tr', {}, h('td', { colspan: '7', class: 'empty' }, 'No critical value.')))));
    } catch (err) {
      if (!disposed) showError(err instanceof ApiError ? err.message : String(err));
    }
  }

  load();
  const timer = setInterval(() => {
    // Not while someone types an acknowledgement: the rows are rebuilt.
    const typing = list.contains(document.activeElement) && document.activeElement instanceof HTMLInputElement;
    if (!document.hidden && !typing) load();
  }, REFRESH_MS);
  return () => {
    disposed = true;
    clearInterval(timer);
  };
}
