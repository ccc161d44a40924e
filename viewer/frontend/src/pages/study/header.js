// @ts-check
// The study page's header: patient, study, priority, who claimed it (claim/release), and
// the "due in" that counts down while the study is open.
import { ApiError, api, me } from '../../api.js';
import { formatDate, formatPersonName, h, replace } from '../../dom.js';
import { ageSex, canReport, priorityClass, priorityLabel } from '../worklist.js';
import { dueText, dueTime } from './format.js';
import { seg } from './state.js';

/** @typedef {import('./state.js').StudyState} StudyState */
/** @typedef {import('./state.js').Study} Study */

/** How often the header's "due in" is brought up to date. */
const DUE_TICK_MS = 30_000;

/**
 * The header (its timer stops with state.disposers).
 * @param {StudyState} state
 * @returns {{ el: HTMLElement, render: (study: Study) => void, fail: () => void }}
 */
export function mountHeader(state) {
  const el = h('section', { class: 'study-header', testid: 'study-header' }, 'Loading study…');

  // "due in" counts down while the study is open: the header keeps the due time and
  // brings the text up to date every DUE_TICK_MS.
  let dueMs = NaN;
  const dueEl = h('span', { class: 'muted due', testid: 'study-due' });
  function tickDue() {
    const due = dueText(dueMs, Date.now());
    if (!due) {
      dueEl.hidden = true;
      return;
    }
    dueEl.hidden = false;
    dueEl.className = due.overdue ? 'overdue due' : 'muted due';
    dueEl.dataset.secondsLeft = String(due.secondsLeft);
    replace(dueEl, due.text);
  }
  const dueTimer = setInterval(tickDue, DUE_TICK_MS);
  state.disposers.push(() => clearInterval(dueTimer));

  /** @param {Study} study */
  function render(study) {
    const user = me();
    const mine = study.claimed_by && study.claimed_by === user?.username;
    dueMs = dueTime(study, Date.now());
    const label = priorityLabel(study);
    const claimBtn = /** @type {HTMLButtonElement | null} */ (!canReport(user) ? null : !study.claimed_by
      ? h('button', { class: 'btn primary', type: 'button', testid: 'study-claim' }, 'Claim')
      : mine ? h('button', { class: 'btn', type: 'button', testid: 'study-release' }, 'Release') : null);
    claimBtn?.addEventListener('click', async () => {
      claimBtn.disabled = true;
      try {
        const action = study.claimed_by ? 'release' : 'claim';
        const item = await api('POST', `/api/studies/${seg(study.study_id)}/${action}`);
        Object.assign(study, item ?? {});
        render(study);
      } catch (err) {
        state.showError(err instanceof ApiError ? err.message : String(err));
        claimBtn.disabled = false;
      }
    });
    replace(el,
      h('a', { class: 'btn ghost', href: '#/worklist', testid: 'back-to-worklist' }, '‹ Worklist'),
      h('div', { class: 'patient' },
        h('span', { class: 'strong', testid: 'study-patient-name' }, formatPersonName(study.patient_name)),
        h('span', { class: 'muted' }, ` ${study.patient_id ?? ''}`),
        ageSex(study) ? h('span', { class: 'muted', testid: 'study-age-sex' }, ` · ${ageSex(study)}`) : null),
      h('div', { class: 'study-what' }, h('span', { testid: 'study-description' }, study.description ?? ''),
        h('span', { class: 'muted' }, ` · ${[formatDate(study.study_date), (study.modalities ?? []).join('/'),
          study.site_name || study.site_id || ''].filter(Boolean).join(' · ')}`)),
      h('span', { class: `badge prio ${priorityClass(label)}`, testid: 'study-priority' }, label),
      study.ai_critical && label !== 'AI CRITICAL' ? h('span', { class: 'badge crit' }, 'AI CRITICAL') : null,
      h('span', { class: 'muted', testid: 'study-claimed-by' },
        study.claimed_by ? `claimed by ${study.claimed_by}` : 'unclaimed'),
      dueEl,
      claimBtn);
    tickDue();
  }

  /** The study could not be loaded: only the way back stays. */
  function fail() {
    replace(el, h('a', { class: 'btn ghost', href: '#/worklist' }, '‹ Worklist'));
  }

  return { el, render, fail };
}
