// @ts-check
// The study page's AI findings panel: each finding with its figures and its review
// (accept/reject); read-only while the report is signed (rdc:report-state from report.js).
import { ApiError, api } from '../../api.js';
import { h, replace } from '../../dom.js';
import { findingFigures, reviewClass } from './format.js';
import { seg } from './state.js';

/** @typedef {import('./state.js').StudyState} StudyState */
/** @typedef {import('./state.js').Study} Study */
/** @typedef {import('./state.js').Finding} Finding */

/**
 * The findings panel (its listener goes with state.disposers).
 * @param {StudyState} state
 * @returns {{ el: HTMLElement, render: (study: Study) => void }}
 */
export function mountFindings(state) {
  const el = h('section', { class: 'panel', testid: 'ai-findings' });

  // Once the report is signed its AI findings are what it was signed on: read-only
  // until an addendum is started (the server answers 409 meanwhile).
  let findingsLocked = false;
  /** @type {(() => void)[]} */
  const findingUpdates = [];
  /** @param {Event} event */
  const onReportState = (event) => {
    const detail = /** @type {CustomEvent<{ studyId?: unknown, locked?: boolean } | null>} */ (event).detail;
    if (String(detail?.studyId) !== String(state.studyId)) return;
    findingsLocked = Boolean(detail?.locked);
    el.dataset.locked = String(findingsLocked);
    for (const fn of findingUpdates) fn();
  };
  document.addEventListener('rdc:report-state', onReportState);
  state.disposers.push(() => document.removeEventListener('rdc:report-state', onReportState));

  /** @param {Finding} f */
  function renderFinding(f) {
    const badge = h('span', { class: reviewClass(f.review), testid: 'ai-finding-review' }, f.review ?? 'pending');
    const accept = /** @type {HTMLButtonElement} */ (
      h('button', { class: 'btn small accept', type: 'button', testid: 'ai-finding-accept' }, 'Accept'));
    const reject = /** @type {HTMLButtonElement} */ (
      h('button', { class: 'btn small reject', type: 'button', testid: 'ai-finding-reject' }, 'Reject'));
    const li = h('li', {
      class: f.critical ? 'finding critical' : 'finding', testid: 'ai-finding',
      dataset: { findingId: String(f.id), review: String(f.review ?? 'pending') },
    },
    h('div', { class: 'finding-head' },
      h('span', { class: 'strong', testid: 'ai-finding-label' }, f.label ?? ''),
      f.critical ? h('span', { class: 'badge crit', testid: 'ai-finding-critical' }, 'CRITICAL') : null,
      f.positive === false ? h('span', { class: 'badge' }, 'negative') : null,
      badge),
    h('div', { class: 'muted small' }, findingFigures(f)),
    h('div', { class: 'muted small', testid: 'ai-finding-model' }, `${f.model ?? '?'}@${f.version ?? '?'} · unverified AI output`),
    h('div', { class: 'finding-actions' }, accept, reject));
    /** @param {string} review */
    const update = (review) => {
      li.dataset.review = review;
      replace(badge, review);
      badge.className = reviewClass(review);
      accept.disabled = findingsLocked || review === 'accepted';
      reject.disabled = findingsLocked || review === 'rejected';
      const why = findingsLocked ? 'The report is signed: start an addendum to change the review' : null;
      for (const b of [accept, reject]) {
        if (why) b.title = why;
        else b.removeAttribute('title');
      }
    };
    update(f.review ?? 'pending');
    findingUpdates.push(() => update(f.review ?? 'pending'));
    /** @param {'accepted' | 'rejected'} decision */
    const review = async (decision) => {
      accept.disabled = reject.disabled = true;
      try {
        const out = await api('POST', `/api/ai-findings/${seg(f.id)}/review`, { body: { decision } });
        f.review = out?.review ?? decision;
        // The server puts accepted findings into the open draft; the report panel reloads it.
        document.dispatchEvent(new CustomEvent('rdc:findings-reviewed'));
      } catch (err) {
        state.showError(err instanceof ApiError ? err.message : String(err));
      }
      update(f.review ?? 'pending');
    };
    accept.addEventListener('click', () => review('accepted'));
    reject.addEventListener('click', () => review('rejected'));
    return li;
  }

  /** @param {Study} study */
  function render(study) {
    const findings = study.ai_findings ?? [];
    findingUpdates.length = 0;
    const list = h('ul', { class: 'findings' }, findings.map(renderFinding));
    replace(el, h('h3', {}, `AI findings (${findings.length})`),
      findings.length ? list : h('p', { class: 'muted' }, 'No AI findings for this study.'));
  }

  return { el, render };
}
