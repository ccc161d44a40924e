// @ts-check
// Second opinions (#/pathology/consults): what others asked me (answer it, opening the
// shared case) and what I asked (grade the answer: concordant, minor or major
// discrepancy, which the concordance table counts).
import { ApiError, api } from '../api.js';
import { h, replace } from '../dom.js';
import { pathologyTabs } from './pathology.js';
import { consultItem } from './pathology_consult_form.js';
import { CONCORDANCE, casePath, consultAction } from './pathology_format.js';

/** @typedef {Record<string, any>} Consult */

/** @param {unknown} err */
const message = (err) => (err instanceof ApiError ? err.message : err instanceof Error ? err.message : String(err));

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderPathologyConsults(root, { navigate, user }) {
  const error = h('p', { class: 'error', role: 'alert', testid: 'consults-error', hidden: true });
  const asked = h('ul', { class: 'consult-list', testid: 'consults-to-me' });
  const mine = h('ul', { class: 'consult-list', testid: 'consults-mine' });
  let disposed = false;
  root.append(pathologyTabs('consults', user), h('section', { class: 'consults-page' },
    h('h2', {}, 'Second opinions'), error,
    h('h3', {}, 'Asked of me'), asked,
    h('h3', {}, 'Asked by me'), mine));

  /** @param {string} text */
  function showError(text) {
    replace(error, text);
    error.hidden = !text;
  }

  /** @param {Consult} c */
  function row(c) {
    const li = consultItem(c);
    const kase = c.case ?? {};
    li.prepend(h('div', {},
      h('a', {
        href: casePath(c.case_id, Array.isArray(c.slide_ids) ? c.slide_ids.slice(0, 1) : []), testid: 'consult-case-link',
        onClick: (/** @type {Event} */ e) => { e.preventDefault(); navigate(casePath(c.case_id, (c.slide_ids ?? []).slice(0, 1))); },
      }, `Case ${kase.accession_number ?? c.case_id}`),
      kase.organ ? h('span', { class: 'muted small' }, ` · ${kase.organ}`) : null,
      kase.site_id ? h('span', { class: 'muted small' }, ` · ${kase.site_id}`) : null));
    const action = consultAction(c, typeof user?.id === 'number' ? user.id : null);
    if (action === 'answer') {
      const answer = h('textarea', { rows: '3', testid: 'consult-answer-input', 'aria-label': 'Your answer' });
      const send = h('button', { class: 'btn primary small', type: 'submit', testid: 'consult-answer-submit' }, 'Send answer');
      const form = h('form', { class: 'consult-form' }, answer, send);
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        if (!answer.value.trim()) return;
        send.disabled = true;
        try {
          await api('POST', `/api/pathology/consults/${encodeURIComponent(c.id)}/answer`, { body: { answer: answer.value.trim() } });
          await load();
        } catch (err) {
          showError(message(err));
          send.disabled = false;
        }
      });
      li.append(form);
    } else if (action === 'grade') {
      const grade = h('select', { testid: 'consult-grade-select', 'aria-label': 'Concordance' },
        CONCORDANCE.map((g) => h('option', { value: g }, g === 'concordant' ? 'Concordant' : `${g[0].toUpperCase()}${g.slice(1)} discrepancy`)));
      const send = h('button', { class: 'btn primary small', type: 'submit', testid: 'consult-grade-submit' }, 'Grade');
      const form = h('form', { class: 'consult-form row' }, grade, send);
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        send.disabled = true;
        try {
          await api('POST', `/api/pathology/consults/${encodeURIComponent(c.id)}/grade`, { body: { concordance: grade.value } });
          await load();
        } catch (err) {
          showError(message(err));
          send.disabled = false;
        }
      });
      li.append(form);
    }
    return li;
  }

  async function load() {
    try {
      const data = await api('GET', '/api/pathology/consults');
      if (disposed) return;
      /** @type {Consult[]} */
      const all = Array.isArray(data?.consults) ? data.consults : [];
      const toMe = all.filter((c) => c.consultant_id === user?.id);
      const byMe = all.filter((c) => c.requested_by === user?.id);
      asked.replaceChildren(...toMe.map(row));
      mine.replaceChildren(...byMe.map(row));
      if (!toMe.length) asked.append(h('li', { class: 'muted' }, 'None.'));
      if (!byMe.length) mine.append(h('li', { class: 'muted' }, 'None.'));
      showError('');
    } catch (err) {
      showError(message(err));
    }
  }
  load();
  return () => { disposed = true; };
}
