// @ts-check
// One lab result (#/lab/result/<id>): value, flag and range, its state and review,
// the QC status of its run with the Westgard rules, HIL, every rule that fired, the
// delta history, earlier attempts (reruns) and its signature. Links to the specimen's
// custody timeline and, for the order, the FHIR DiagnosticReport.
import { ApiError, api } from '../api.js';
import { formatDateTime, formatPersonName, h, replace } from '../dom.js';
import { labTabs } from './lab.js';
import {
  deltaHistory, firedRules, flagBadge, hilText, isLabReviewer, qcText, rangeText, valueText,
} from './lab_format.js';

/**
 * @param {HTMLElement} root
 * @param {string} resultId
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLabResult(root, resultId, { navigate, user }) {
  let disposed = false;
  const error = h('p', { class: 'error', role: 'alert', testid: 'lab-result-error', hidden: true });
  const body = h('section', { class: 'worklist-page', testid: 'lab-result' }, 'Loading…');
  root.append(labTabs(isLabReviewer(user) ? 'held' : 'critical', user, navigate), error, body);

  /** @param {string} label @param {DomChild} value @param {string} testid */
  const field = (label, value, testid) => h('tr', {}, h('th', { scope: 'row' }, label), h('td', { testid }, value));

  api('GET', `/api/lab/results/${encodeURIComponent(resultId)}`).then((r) => {
    if (disposed) return;
    const badge = flagBadge(r);
    const rules = firedRules(r.rules_fired);
    const history = deltaHistory(r);
    const attempts = Array.isArray(r.attempts) ? r.attempts : [];
    replace(body,
      h('h2', {}, `${r.test_code ?? ''} ${r.test_name ? `· ${r.test_name}` : ''}`),
      h('table', { class: 'worklist detail' }, h('tbody', {},
        field('Value', [valueText(r), ' ', badge.label ? h('span', { class: badge.cls }, badge.label) : ''], 'lab-result-value'),
        field('Reference range', rangeText(r) || '—', 'lab-result-range'),
        field('State', String(r.state ?? ''), 'lab-result-state'),
        field('Patient', `${formatPersonName(r.patient_name)} (${r.patient_id ?? ''}) · ${r.site_id ?? ''}`, 'lab-result-patient'),
        field('Specimen', r.accession ? h('a', { href: `#/lab/specimen/${encodeURIComponent(r.accession)}` }, String(r.accession)) : '—', 'lab-result-specimen'),
        field('LOINC', String(r.loinc ?? ''), 'lab-result-loinc'),
        field('Analyzer', `${r.analyzer_id ?? ''} ${r.run_code ? `run ${r.run_code}` : ''}`, 'lab-result-analyzer'),
        field('Measured', formatDateTime(r.measured_at), 'lab-result-measured'),
        field('QC', qcText(r) || '—', 'lab-result-qc'),
        field('QC hold', String(r.qc_hold || '—'), 'lab-result-qc-hold'),
        field('HIL', hilText(r.hil) || '—', 'lab-result-hil'),
        field('Specimen hold', String(r.specimen_hold || '—'), 'lab-result-hold'),
        field('Rule set', String(r.rule_set || '—'), 'lab-result-rule-set'),
        field('Review', r.review?.action ? `${r.review.action} by ${r.review.by ?? ''}, ${formatDateTime(r.review.at)}: ${r.review.reason ?? ''}` : '—', 'lab-result-review'),
        field('Signed', r.signature ? `${r.signature.by}, ${formatDateTime(r.signature.at)} (${r.signature.hash_algorithm ?? ''} ${String(r.signature.content_hash ?? '').slice(0, 16)}…)` : '—', 'lab-result-signed'),
        field('Sent to the site', r.message ? `${r.message.kind} ${r.message.control_id}: ACK ${r.message.ack_code || 'pending'}` : '—', 'lab-result-message'),
        r.order_id ? field('FHIR', h('a', { href: `/api/lab/orders/${encodeURIComponent(r.order_id)}/fhir`, target: '_blank', rel: 'noopener' }, 'DiagnosticReport'), 'lab-result-fhir') : null)),
      h('h3', {}, 'Rules that fired'),
      rules.length ? h('ul', { testid: 'lab-result-rules' }, rules.map((f) => h('li', { testid: 'lab-rule', dataset: { rule: f.rule, severity: f.severity } }, `${f.rule} (${f.severity}): ${f.message}`)))
        : h('p', { class: 'muted' }, 'None.'),
      h('h3', {}, 'Previous results (delta check)'),
      history.length ? h('ul', { testid: 'lab-result-history' }, history.map((p) => h('li', {}, `${p.value} — ${formatDateTime(p.at)}`)))
        : h('p', { class: 'muted' }, 'No previous result.'),
      attempts.length ? [h('h3', {}, 'Earlier measurements of this specimen'),
        h('ul', { testid: 'lab-result-attempts' }, attempts.map((/** @type {any} */ a) => h('li', {}, `${a?.value_text || a?.value || ''} — ${formatDateTime(a?.measured_at)}`)))] : null);
  }).catch((err) => {
    if (disposed) return;
    replace(body);
    replace(error, err instanceof ApiError ? err.message : String(err));
    error.hidden = false;
  });
  return () => { disposed = true; };
}
