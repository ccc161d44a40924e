// @ts-check
// Second opinions on the case page: the ones asked for this case, and the form that asks
// one (a consultant from /api/pathology/consultants, the question, the slides, blinded
// or not: a blinded consultant does not see the first diagnosis).
import { ApiError, api } from '../api.js';
import { formatDateTime, h, replace } from '../dom.js';
import { isPathologist, slideName } from './pathology_format.js';

/** @typedef {Record<string, any>} Consult */

/** @param {unknown} err */
const message = (err) => (err instanceof ApiError ? err.message : err instanceof Error ? err.message : String(err));

/**
 * One consult as a list item (the case page and the consults page).
 * @param {Consult} c
 * @returns {HTMLLIElement}
 */
export function consultItem(c) {
  return h('li', { class: 'consult-item', testid: 'consult-item', dataset: { consultId: String(c.id), state: String(c.state ?? '') } },
    h('div', {}, h('span', { class: `badge consult-${String(c.state ?? '').replace(/[^a-z]/g, '')}`, testid: 'consult-state' }, c.state ?? ''),
      ' ', h('span', { class: 'strong' }, `${c.requester_name ?? ''} → ${c.consultant_name ?? ''}`),
      c.blinded ? h('span', { class: 'badge small', title: 'The consultant does not see the first diagnosis' }, 'blinded') : null,
      h('span', { class: 'muted small' }, ` ${formatDateTime(c.requested_at)}`)),
    h('div', { class: 'small' }, h('span', { class: 'muted' }, 'Question: '), h('span', { testid: 'consult-question' }, c.question ?? '')),
    c.first_diagnosis ? h('div', { class: 'small' }, h('span', { class: 'muted' }, 'First diagnosis: '), c.first_diagnosis) : null,
    c.answer ? h('div', { class: 'small' }, h('span', { class: 'muted' }, 'Answer: '), h('span', { testid: 'consult-answer' }, c.answer)) : null,
    c.concordance ? h('div', { class: 'small' }, h('span', { class: 'muted' }, 'Concordance: '), h('span', { testid: 'consult-concordance' }, c.concordance)) : null);
}

/**
 * The case page's second-opinion section. `reload` refreshes the case after a request.
 * @param {HTMLElement} root
 * @param {Record<string, any>} detail the case (CaseDetail)
 * @param {any} user
 * @param {() => Promise<void>} reload
 * @returns {() => void}
 */
export function renderCaseConsults(root, detail, user, reload) {
  /** @type {Consult[]} */
  const consults = Array.isArray(detail.consults) ? detail.consults : [];
  /** @type {Record<string, any>[]} */
  const slides = Array.isArray(detail.slides) ? detail.slides : [];
  const list = consults.length ? h('ul', { class: 'consult-list' }, consults.map(consultItem))
    : h('p', { class: 'muted small' }, 'No second opinion asked.');
  const open = h('button', { class: 'btn small', type: 'button', testid: 'consult-open-form' }, 'Request second opinion');
  replace(root, h('h3', {}, 'Second opinion'), list, isPathologist(user) ? open : null);
  if (!isPathologist(user)) return () => {};

  const consultant = h('select', { testid: 'consult-consultant', id: 'consult-consultant', required: true },
    h('option', { value: '' }, 'Loading…'));
  const question = h('textarea', { rows: '3', testid: 'consult-question-input', id: 'consult-question-input', required: true });
  const first = h('input', { type: 'text', testid: 'consult-first-diagnosis', id: 'consult-first-diagnosis' });
  const blinded = h('input', { type: 'checkbox', testid: 'consult-blinded', checked: true });
  const slideBoxes = slides.map((s) => h('input', { type: 'checkbox', checked: true, value: String(s.id), testid: 'consult-slide', dataset: { slideId: String(s.id) } }));
  const err = h('p', { class: 'error', role: 'alert', testid: 'consult-error', hidden: true });
  const submit = h('button', { class: 'btn primary small', type: 'submit', testid: 'consult-submit' }, 'Send request');
  const cancel = h('button', { class: 'btn small', type: 'button', testid: 'consult-cancel' }, 'Cancel');
  const form = h('form', { class: 'consult-form', testid: 'consult-form', hidden: true },
    h('label', { for: 'consult-consultant' }, 'Consultant'), consultant,
    h('label', { for: 'consult-question-input' }, 'Question'), question,
    h('label', { for: 'consult-first-diagnosis' }, 'Your diagnosis so far'), first,
    h('label', { class: 'check' }, blinded, ' Blinded (the consultant does not see your diagnosis)'),
    h('fieldset', {}, h('legend', {}, 'Slides to share'),
      slides.map((s, i) => h('label', { class: 'check' }, slideBoxes[i], ` ${slideName(s)}`))),
    err, h('div', { class: 'row' }, cancel, submit));
  root.append(form);

  let loaded = false;
  open.addEventListener('click', async () => {
    form.hidden = false;
    open.hidden = true;
    if (loaded) return;
    try {
      const data = await api('GET', '/api/pathology/consultants');
      /** @type {{ id: number, display_name?: string, sites?: string[] }[]} */
      const people = (Array.isArray(data?.consultants) ? data.consultants : []).filter((/** @type {{ id: number }} */ p) => p.id !== user?.id);
      consultant.replaceChildren(h('option', { value: '' }, people.length ? 'Choose…' : 'No consultant available'),
        ...people.map((p) => h('option', { value: String(p.id) }, `${p.display_name ?? p.id}${p.sites?.length ? ` (${p.sites.join(', ')})` : ''}`)));
      loaded = true;
    } catch (e) {
      replace(err, message(e));
      err.hidden = false;
    }
  });
  cancel.addEventListener('click', () => { form.hidden = true; open.hidden = false; });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const chosen = slideBoxes.filter((b) => b.checked).map((b) => Number(b.value));
    if (!consultant.value || !question.value.trim() || !chosen.length) {
      replace(err, 'Choose a consultant, write the question and share at least one slide.');
      err.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      await api('POST', `/api/pathology/cases/${encodeURIComponent(String(detail.id))}/consults`, {
        body: {
          consultant_id: Number(consultant.value), question: question.value.trim(), slide_ids: chosen,
          blinded: blinded.checked, first_diagnosis: first.value.trim(),
        },
      });
      await reload();
    } catch (e) {
      replace(err, message(e));
      err.hidden = false;
      submit.disabled = false;
    }
  });
  return () => {};
}
