// @ts-check
// The lab reviewers' worklist (#/lab): held results as the server sorts them (critical
// first, then oldest), each with its value, flag, QC status and Westgard rule, HIL,
// the rules that fired and the delta history. A reviewer releases a QC hold, asks for a
// rerun or rejects, each with a reason; ticks several results and signs them at once
// with the passphrase of their key (each result gets its own signature). Also the lab
// area's sub-navigation.
import { ApiError, api } from '../api.js';
import { formatDateTime, formatPersonName, h, replace } from '../dom.js';
import {
  ACTION_LABELS, REVIEW_ACTIONS, canSign, deltaHistory, firedRules, flagBadge, hilText,
  isLabReviewer, qcText, rangeText, seesLabDashboard, sortHeld, valueText,
} from './lab_format.js';

const REFRESH_MS = 30_000;
const COLUMNS = ['', 'Flag', 'Test', 'Value', 'Range', 'Patient', 'Specimen', 'QC', 'HIL', 'Rules fired', 'Previous', 'Measured', ''];

/**
 * The lab area's tabs: held results (reviewers), critical values, QC charts
 * (reviewers), the dashboard (reviewers, admins), a specimen look-up.
 * @param {string} current  'held' | 'critical' | 'qc' | 'dashboard' | 'custody'
 * @param {{ roles?: unknown } | null | undefined} user
 * @param {(hash: string) => void} [navigate]
 */
export function labTabs(current, user, navigate) {
  const tab = (/** @type {string} */ name, /** @type {string} */ href, /** @type {string} */ label) => h('a', {
    href, testid: `lab-tab-${name}`, class: current === name ? 'active' : null,
    'aria-current': current === name ? 'page' : null,
  }, label);
  const reviewer = isLabReviewer(user);
  const lookup = h('input', { type: 'search', testid: 'lab-lookup', placeholder: 'Accession or box', size: 14, 'aria-label': 'Accession or box code' });
  const form = h('form', { class: 'inline', testid: 'lab-lookup-form' }, lookup,
    h('button', { class: 'btn small', type: 'submit', testid: 'lab-lookup-go' }, 'Timeline'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const code = lookup.value.trim();
    if (!code || !navigate) return;
    navigate(/^L\d+$/.test(code) ? `#/lab/specimen/${encodeURIComponent(code)}` : `#/lab/box/${encodeURIComponent(code)}`);
  });
  return h('nav', { class: 'subnav', 'aria-label': 'Lab' },
    reviewer ? tab('held', '#/lab', 'Held results') : null,
    tab('critical', '#/lab/critical', 'Critical values'),
    reviewer ? tab('qc', '#/lab/qc', 'QC charts') : null,
    seesLabDashboard(user) ? tab('dashboard', '#/lab/dashboard', 'Dashboard') : null,
    form);
}

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLabHeld(root, { navigate, user }) {
  let disposed = false;
  /** @type {Set<number>} */
  const selected = new Set();
  const message = h('p', { class: 'error', role: 'alert', testid: 'lab-held-error', hidden: true });
  const notice = h('p', { class: 'muted', role: 'status', testid: 'lab-held-status' });
  const total = h('span', { class: 'muted', testid: 'lab-held-total' });
  const tbody = h('tbody');
  const table = h('table', { class: 'worklist lab-worklist', testid: 'lab-held-table' },
    h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', { scope: 'col' }, c)))), tbody);
  const passphrase = h('input', { type: 'password', testid: 'lab-sign-passphrase', autocomplete: 'off', placeholder: 'Key passphrase', 'aria-label': 'Key passphrase' });
  const signButton = h('button', { class: 'btn primary', type: 'submit', testid: 'lab-sign-submit', disabled: true }, 'Sign selected');
  const signForm = h('form', { class: 'inline', testid: 'lab-sign-form' }, passphrase, signButton,
    h('span', { class: 'muted', testid: 'lab-sign-count' }, ''));

  /** @param {string} text */
  function showError(text) {
    replace(message, text);
    message.hidden = !text;
  }

  function updateSign() {
    signButton.disabled = selected.size === 0;
    replace(/** @type {HTMLElement} */ (signForm.lastChild), selected.size ? `${selected.size} selected` : '');
  }

  signForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!selected.size) return;
    signButton.disabled = true;
    try {
      const out = await api('POST', '/api/lab/sign', { body: { result_ids: [...selected], passphrase: passphrase.value } });
      passphrase.value = '';
      const n = Array.isArray(out?.results) ? out.results.length : selected.size;
      replace(notice, `Signed ${n} result${n === 1 ? '' : 's'}; sent to the site.`);
      selected.clear();
      showError('');
      await load();
    } catch (err) {
      showError(err instanceof ApiError ? err.message : String(err));
    }
    updateSign();
  });

  /**
   * The reason form of one decision, under the row.
   * @param {Record<string, any>} item
   * @param {string} action
   * @param {HTMLElement} slot
   */
  function askReason(item, action, slot) {
    const reason = h('input', { type: 'text', testid: 'lab-review-reason', placeholder: 'Reason', size: 28, required: true, 'aria-label': 'Reason' });
    const go = h('button', { class: 'btn small primary', type: 'submit', testid: 'lab-review-submit' }, ACTION_LABELS[action]);
    const form = h('form', { class: 'inline', testid: 'lab-review-form', dataset: { action } }, reason, go,
      h('button', { class: 'btn small ghost', type: 'button', onClick: () => replace(slot) }, 'Cancel'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!reason.value.trim()) return;
      go.disabled = true;
      try {
        await api('POST', `/api/lab/results/${encodeURIComponent(item.id)}/review`, { body: { action, reason: reason.value.trim() } });
        replace(notice, `${ACTION_LABELS[action]}: ${item.test_code ?? ''} ${item.accession ?? ''}`);
        showError('');
        await load();
      } catch (err) {
        showError(err instanceof ApiError ? err.message : String(err));
        go.disabled = false;
      }
    });
    replace(slot, form);
    reason.focus();
  }

  /** @param {Record<string, any>} item */
  function row(item) {
    const id = Number(item.id);
    const badge = flagBadge(item);
    const qc = qcText(item);
    const rules = firedRules(item.rules_fired);
    const history = deltaHistory(item);
    const box = h('input', {
      type: 'checkbox', testid: 'lab-select', 'aria-label': `Select result ${id}`,
      checked: selected.has(id), disabled: !canSign(item),
      title: canSign(item) ? 'Select for signing' : 'Release or rerun the QC hold first',
    });
    box.addEventListener('change', () => {
      if (box.checked) selected.add(id); else selected.delete(id);
      updateSign();
    });
    const slot = h('div', { class: 'review-slot', testid: 'lab-review-slot' });
    const actions = h('div', { class: 'actions' },
      h('button', { class: 'btn small', type: 'button', testid: 'lab-open', onClick: () => navigate(`#/lab/result/${id}`) }, 'Open'),
      REVIEW_ACTIONS.filter((a) => a !== 'release' || item.qc_hold).map((a) => h('button', {
        class: 'btn small', type: 'button', testid: `lab-${a}`, onClick: () => askReason(item, a, slot),
      }, ACTION_LABELS[a])));
    return h('tr', {
      testid: 'lab-held-row', class: item.critical ? 'critical' : null,
      dataset: { resultId: String(id), critical: String(Boolean(item.critical)), qcHold: String(Boolean(item.qc_hold)), test: String(item.test_code ?? '') },
    },
    h('td', {}, box),
    h('td', {}, badge.label ? h('span', { class: badge.cls, testid: 'lab-flag' }, badge.label) : ''),
    h('td', { testid: 'lab-test' }, String(item.test_code ?? ''), h('div', { class: 'muted small' }, String(item.test_name ?? item.loinc ?? ''))),
    h('td', { class: 'num', testid: 'lab-value' }, valueText(item)),
    h('td', { class: 'small' }, rangeText(item)),
    h('td', { testid: 'lab-patient' }, formatPersonName(item.patient_name), h('div', { class: 'muted small' }, `${item.patient_id ?? ''} · ${item.site_id ?? ''}`)),
    h('td', {}, item.accession ? h('a', { href: `#/lab/specimen/${encodeURIComponent(item.accession)}`, testid: 'lab-accession' }, String(item.accession)) : '',
      item.specimen_hold ? h('div', { class: 'error small', testid: 'lab-specimen-hold' }, String(item.specimen_hold)) : null),
    h('td', { testid: 'lab-qc', class: item.qc_hold ? 'error small' : 'small', title: String(item.qc_hold ?? '') }, qc || '—'),
    h('td', { testid: 'lab-hil', class: 'small' }, hilText(item.hil) || '—'),
    h('td', { testid: 'lab-rules', class: 'small' }, rules.length
      ? h('ul', { class: 'plain' }, rules.map((f) => h('li', { testid: 'lab-rule', dataset: { rule: f.rule, severity: f.severity }, title: f.message }, `${f.rule}: ${f.message}`)))
      : '—'),
    h('td', { testid: 'lab-history', class: 'small' }, history.length
      ? history.slice(0, 3).map((p) => h('div', {}, `${p.value} (${formatDateTime(p.at)})`)) : '—'),
    h('td', { class: 'small' }, formatDateTime(item.measured_at)),
    h('td', {}, actions, slot));
  }

  async function load() {
    try {
      const data = await api('GET', '/api/lab/held');
      if (disposed) return;
      const rows = sortHeld(Array.isArray(data?.results) ? data.results : []);
      for (const id of [...selected]) if (!rows.some((r) => Number(r.id) === id && canSign(r))) selected.delete(id);
      replace(tbody, rows.length ? rows.map(row)
        : h('tr', {}, h('td', { colspan: String(COLUMNS.length), class: 'empty' }, 'No held result.')));
      replace(total, `${rows.length} held`);
      updateSign();
    } catch (err) {
      if (!disposed) showError(err instanceof ApiError ? err.message : String(err));
    }
  }

  root.append(labTabs('held', user, navigate), h('section', { class: 'worklist-page' },
    h('div', { class: 'toolbar' }, h('h2', {}, 'Held results'), total, signForm),
    message, notice, h('div', { class: 'table-wrap' }, table)));
  load();
  // Not while a reason is being typed: the rows are rebuilt.
  const timer = setInterval(() => { if (!document.hidden && !tbody.querySelector('form')) load(); }, REFRESH_MS);
  return () => {
    disposed = true;
    clearInterval(timer);
  };
}
