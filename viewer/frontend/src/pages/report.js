// @ts-check
import { ApiError, api, me, trackSave, tuning } from '../api.js';
import { formatDateTime, h, humanize, replace } from '../dom.js';
import {
  PLACEHOLDER, differingFields, draftKey, fieldRows, isSigned, parseDraft, unresolvedFields as openFields,
} from './report_form.js';

const DELIVERY_POLL_MS = 10_000;
/** Roles that write and sign reports (viewer/worklist.py READER_ROLES). */
const REPORTING_ROLES = ['radiologist', 'cardiologist', 'pathologist', 'lab_reviewer'];

function canReport(user) {
  return Array.isArray(user?.roles) && user.roles.some((r) => REPORTING_ROLES.includes(r));
}
/** Unsaved text goes to the server this often (localStorage `rdc.autosaveMs` shortens it
 * for the browser tests). */
const AUTOSAVE_MS = 45_000;
/** Until the server has it, typed text is also kept in this browser (report_form.js
 * draftKey): a session that ends, a closed tab or a crash does not lose it. */

function seg(v) {
  return encodeURIComponent(String(v));
}

function localKey(studyId, version) {
  return draftKey(me()?.username, studyId, version);
}

function readLocal(key) {
  try {
    return parseDraft(localStorage.getItem(key));
  } catch {
    return null;
  }
}

function writeLocal(key, fields) {
  try {
    localStorage.setItem(key, JSON.stringify({ fields, at: new Date().toISOString() }));
  } catch (err) {
    console.warn('report: cannot keep a local copy', err);
  }
}

function dropLocal(key) {
  try {
    localStorage.removeItem(key);
  } catch {
    /* nothing kept */
  }
}

/**
 * Reporting panel: template fields of the current version, save draft (Ctrl+S), sign
 * with a passphrase (Ctrl+Enter), addendum after signing, delivery status.
 *
 * Opening it stores nothing: the server answers the draft a report would start from,
 * and the report is created by the first save (so an opened study stays unread).
 * Typed text is kept in localStorage until the server has it, and saved every
 * AUTOSAVE_MS. Each render tells the page whether the report's inputs (AI findings, the
 * ECG) may still change: `rdc:report-state` with `{locked, state}`.
 * `options.sign(body)`, when given, signs instead of POST /api/reports/{id}/sign and
 * resolves with the report as GET /api/studies/{id}/report gives it (the pathology case
 * signs through its own route, which also moves the case to signed).
 * Returns a cleanup function.
 */
export function renderReportPanel(root, study, options = {}) {
  let report = null;
  let dirty = false;
  let busy = false;
  let saving = null; // the save in flight (autosave or the reader's)
  let shownVersion = null; // "<number>/<state>" whose fields the inputs show
  let pollTimer = null;
  let disposed = false;
  const fieldInputs = new Map();

  const status = h('span', { class: 'muted small', testid: 'report-status', 'aria-live': 'polite' });
  const error = h('p', { class: 'error', role: 'alert', testid: 'report-error', hidden: true });
  const notice = h('div', { class: 'warning small', role: 'status', testid: 'report-restored', hidden: true });
  const stateBadge = h('span', { class: 'badge', testid: 'report-state' });
  const fieldsBox = h('div', { class: 'report-fields', testid: 'report-fields' });
  const saveBtn = h('button', { class: 'btn', type: 'button', testid: 'report-save', title: 'Save draft (Ctrl+S)' }, 'Save draft');
  const prelimBtn = h('button', { class: 'btn', type: 'button', testid: 'report-preliminary' }, 'Save preliminary');
  const signBtn = h('button', { class: 'btn primary', type: 'button', testid: 'report-sign', title: 'Sign (Ctrl+Enter)' }, 'Sign…');
  const addendumBtn = h('button', { class: 'btn', type: 'button', testid: 'report-addendum', hidden: true }, 'Addendum');
  // The signed report as the site received it (sealed PDF): readers and the site's clerk.
  const pdfLink = h('a', {
    class: 'btn', testid: 'report-pdf', target: '_blank', rel: 'noopener', hidden: true,
    title: 'The signed report as a PDF, as the site received it',
  }, 'PDF');
  const reporter = canReport(me());
  const deliveriesList = h('ul', { class: 'deliveries', testid: 'delivery-status' });
  const deliveriesBox = h('div', { class: 'deliveries-box', hidden: true },
    h('h4', {}, 'Delivery to the site ',
      h('button', { class: 'btn small ghost', type: 'button', testid: 'delivery-refresh', onClick: () => loadDeliveries() }, '↻')),
    deliveriesList);

  // Passphrase dialog: the passphrase unlocks the reader's key server-side, never stored.
  const passphrase = h('input', { type: 'password', autocomplete: 'off', testid: 'sign-passphrase', id: 'sign-passphrase', required: true });
  const signError = h('p', { class: 'error', role: 'alert', testid: 'sign-error', hidden: true });
  // Required fields still empty or holding a {{placeholder}}: named as the dialog opens,
  // and signing stays off until they are resolved (the server would refuse it).
  const signUnresolved = h('div', { class: 'warning small sign-unresolved', role: 'alert', testid: 'sign-unresolved', hidden: true });
  const signConfirm = h('button', { class: 'btn primary', type: 'submit', testid: 'sign-confirm' }, 'Sign report');
  const signCancel = h('button', { class: 'btn', type: 'button', testid: 'sign-cancel' }, 'Cancel');
  const signForm = h('form', { method: 'dialog', class: 'sign-form' },
    h('h3', {}, 'Sign report'),
    h('p', { class: 'muted small' }, 'Signing freezes this version and sends it to the referring site.'),
    signUnresolved,
    h('label', { for: 'sign-passphrase' }, 'Key passphrase'), passphrase, signError,
    h('div', { class: 'row' }, signCancel, signConfirm));
  const dialog = h('dialog', { class: 'sign-dialog', testid: 'sign-dialog' }, signForm);

  root.replaceChildren(
    h('h3', {}, 'Report ', stateBadge),
    error,
    notice,
    fieldsBox,
    h('div', { class: 'report-actions' }, saveBtn, prelimBtn, signBtn, addendumBtn, pdfLink),
    status,
    deliveriesBox,
    dialog,
  );

  function showError(text) {
    replace(error, text);
    error.hidden = !text;
  }
  const message = (err) => (err instanceof ApiError ? err.message : String(err?.message ?? err));
  const current = () => report?.versions?.[report.versions.length - 1] ?? null;
  const editable = () => Boolean(report) && !isSigned(current());
  const key = () => localKey(study.study_id, current());
  const stateToKeep = () => (current()?.state === 'preliminary' ? 'preliminary' : 'draft');

  function setDirty(value) {
    dirty = value;
    root.dataset.dirty = String(value);
    if (value) replace(status, 'Unsaved changes');
  }

  /** The version line, badge and buttons; the fields only when another version shows. */
  function render({ fields: rebuild = false } = {}) {
    const version = current();
    const signed = isSigned(version);
    replace(stateBadge, report?.state ?? '');
    stateBadge.className = `badge rs-${String(report?.state ?? '').replace(/[^a-z]/g, '')}`;
    root.dataset.reportId = String(report?.id ?? '');
    const shown = `${version?.number}/${version?.state}`;
    if (rebuild || shown !== shownVersion) {
      // Only the state changed (draft → preliminary): what is typed stays as typed.
      const sameNumber = !rebuild && shownVersion?.split('/')[0] === String(version?.number);
      renderFields(version, signed, sameNumber && !signed ? fields() : null);
    }
    shownVersion = shown;
    replace(/** @type {HTMLElement} */ (fieldsBox.firstChild),
      `${report?.template ?? ''} · version ${version?.number ?? '?'}${version?.kind ? ` (${version.kind})` : ''}`,
      report && report.id === null ? ' · not saved yet' : '',
      signed && version?.signed_by ? ` · signed by ${version.signed_by} ${formatDateTime(version.signed_at)}` : '');
    saveBtn.hidden = prelimBtn.hidden = signBtn.hidden = signed || !reporter;
    addendumBtn.hidden = !signed || !reporter;
    const anySigned = (report?.versions ?? []).some(isSigned);
    pdfLink.hidden = !anySigned || report?.id === null || report?.id === undefined;
    if (!pdfLink.hidden) pdfLink.href = `/api/reports/${seg(report.id)}/pdf`;
    deliveriesBox.hidden = !anySigned;
    if (anySigned) startPolling();
    document.dispatchEvent(new CustomEvent('rdc:report-state', {
      detail: {
        studyId: study.study_id, locked: !editable(), state: report?.state ?? null,
        reportId: report?.id ?? null,
      },
    }));
  }

  function renderFields(version, signed, typed = null) {
    fieldInputs.clear();
    fieldsBox.replaceChildren(h('div', { class: 'muted small', testid: 'report-version' }));
    for (const [name, value] of Object.entries(version?.fields ?? {})) {
      const id = `report-field-${fieldInputs.size}`;
      const input = h('textarea', {
        id, rows: String(fieldRows(value)),
        testid: `report-field-${name}`, dataset: { field: name }, readonly: signed ? true : null,
        spellcheck: 'true',
      });
      input.value = typed?.[name] ?? value ?? '';
      input.addEventListener('input', () => {
        if (!editable()) return;
        setDirty(true);
        writeLocal(key(), fields());
      });
      fieldInputs.set(name, input);
      fieldsBox.append(h('label', { for: id }, humanize(name)), input);
    }
    if (!fieldInputs.size) fieldsBox.append(h('p', { class: 'muted' }, 'This template has no fields.'));
  }

  /** Text kept in this browser that the server does not have yet goes back in. */
  function restoreLocal() {
    const saved = readLocal(key());
    notice.hidden = true;
    if (!saved) return;
    const differs = differingFields(saved.fields,
      new Map([...fieldInputs].map(([name, input]) => [name, input.value])));
    if (!differs.length) {
      dropLocal(key());
      return;
    }
    const when = formatDateTime(saved.at);
    if (!editable()) {
      notice.dataset.kind = 'signed';
      replace(notice, `Text typed on ${when} was not saved before this version was signed; `
        + 'it is kept in this browser: start an addendum to add it. ',
      h('button', {
        class: 'btn small', type: 'button', testid: 'report-restored-discard',
        onClick: () => { dropLocal(key()); notice.hidden = true; },
      }, 'Discard it'));
      notice.hidden = false;
      return;
    }
    for (const [name, value] of differs) fieldInputs.get(name).value = value;
    setDirty(true);
    replace(notice, `Restored what you typed on ${when}, which had not been saved yet.`);
    notice.dataset.kind = 'restored';
    notice.hidden = false;
  }

  function fields() {
    return Object.fromEntries([...fieldInputs].map(([k, input]) => [k, input.value]));
  }

  function setButtons(disabled) {
    for (const b of [saveBtn, prelimBtn, signBtn, addendumBtn]) b.disabled = disabled;
  }

  async function run(label, fn) {
    if (busy || !report) return false;
    busy = true;
    showError('');
    replace(status, label);
    setButtons(true);
    try {
      await fn();
      return true;
    } catch (err) {
      showError(message(err));
      replace(status, dirty ? 'Unsaved changes' : '');
      return false;
    } finally {
      busy = false;
      setButtons(false);
    }
  }

  /**
   * Send the fields (the first save creates the report). One save at a time: a save
   * asked for while another is on its way follows it. A 401 opens the sign-in dialog
   * (api.js) and the save goes on after it. Resolves true when the server has the text.
   */
  async function save(state = stateToKeep(), { auto = false } = {}) {
    while (saving) await saving.catch(() => {});
    if (!editable()) return false;
    if (auto && (!dirty || busy)) return true;
    const sent = fields();
    const storeKey = key();
    const wasDirty = dirty;
    saving = (async () => {
      if (!auto) replace(status, 'Saving…');
      const body = { fields: sent, state };
      report = report.id === null
        ? await api('POST', `/api/studies/${seg(study.study_id)}/report`, { body })
        : await api('PUT', `/api/reports/${seg(report.id)}/draft`, { body });
    })();
    try {
      await saving;
      if (disposed) {
        if (JSON.stringify(readLocal(storeKey)?.fields) === JSON.stringify(sent)) dropLocal(storeKey);
        return true;
      }
      showError('');
      render();
      // Typed while the save was on its way: still unsaved, still kept locally.
      const now = fields();
      if (JSON.stringify(now) === JSON.stringify(sent)) {
        setDirty(false);
        dropLocal(storeKey);
        if (!notice.hidden && notice.dataset.kind === 'restored') {
          replace(notice, 'The text restored from this browser is saved now.');
        }
        replace(status, `Saved ${new Date().toLocaleTimeString()}${auto ? ' (autosave)' : ''}`);
      } else {
        setDirty(true);
      }
      return true;
    } catch (err) {
      if (!disposed) {
        showError(`Not saved: ${message(err)}${wasDirty ? ' Your text is kept in this browser.' : ''}`);
        replace(status, dirty ? 'Unsaved changes' : '');
      }
      return false;
    } finally {
      saving = null;
    }
  }

  /** Required fields (the template's, from the API) that are empty or hold a {{placeholder}}. */
  function unresolvedFields() {
    return openFields(report?.required_fields ?? [],
      (name) => fieldInputs.get(name)?.value ?? current()?.fields?.[name] ?? '');
  }

  function showUnresolved() {
    const open = unresolvedFields();
    for (const [name, input] of fieldInputs) input.classList.toggle('unresolved', open.includes(name));
    signUnresolved.hidden = !open.length;
    replace(signUnresolved, open.length ? [
      'Resolve before signing (empty, or a {{placeholder}} left): ',
      h('ul', {}, open.map((name) => h('li', { testid: 'sign-unresolved-field', dataset: { field: name } },
        humanize(name),
        PLACEHOLDER.test(fieldInputs.get(name)?.value ?? '') ? ' — a {{placeholder}} is left' : ' — empty'))),
    ] : []);
    signConfirm.disabled = open.length > 0;
    passphrase.disabled = open.length > 0;
    return open;
  }

  function openSign() {
    if (!report || isSigned(current()) || !reporter) return;
    passphrase.value = '';
    signError.hidden = true;
    const open = showUnresolved();
    dialog.showModal();
    (open.length ? signCancel : passphrase).focus();
  }

  signCancel.addEventListener('click', () => {
    dialog.close();
    const first = unresolvedFields()[0];
    if (first) fieldInputs.get(first)?.focus();
  });
  signForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (showUnresolved().length) return;
    if (!passphrase.value) {
      replace(signError, 'Enter the passphrase of your signing key.');
      signError.hidden = false;
      return;
    }
    signConfirm.disabled = true;
    signError.hidden = true;
    try {
      if ((dirty || report.id === null) && !(await save(stateToKeep()))) {
        throw new Error(error.textContent || 'The draft could not be saved.');
      }
      const version = current();
      const body = { passphrase: passphrase.value, version: version?.number };
      report = options.sign
        ? await options.sign(body)
        : await api('POST', `/api/reports/${seg(report.id)}/sign`, { body });
      passphrase.value = '';
      dialog.close();
      render();
      replace(status, `Signed ${new Date().toLocaleTimeString()}`);
      loadDeliveries();
    } catch (err) {
      replace(signError, message(err));
      signError.hidden = false;
    } finally {
      signConfirm.disabled = dialog.open && unresolvedFields().length > 0;
    }
  });

  saveBtn.addEventListener('click', () => save('draft'));
  prelimBtn.addEventListener('click', () => save('preliminary'));
  signBtn.addEventListener('click', openSign);
  addendumBtn.addEventListener('click', () => run('Starting addendum…', async () => {
    report = await api('POST', `/api/reports/${seg(report.id)}/addenda`, { body: { fields: {} } });
    setDirty(false);
    render();
    restoreLocal();
    replace(status, 'Addendum started: edit, then sign it');
    fieldInputs.values().next().value?.focus();
  }));

  async function loadDeliveries() {
    if (!report?.id) return;
    try {
      const items = await api('GET', '/api/deliveries', { query: { report_id: report.id } });
      deliveriesList.replaceChildren(
        ...(items ?? []).map((d) => h('li', { testid: 'delivery-item', dataset: { state: String(d.state ?? '') } },
          h('span', { class: `badge ds-${String(d.state ?? '').replace(/[^a-z]/g, '')}` }, d.state ?? ''),
          ` ${d.channel ?? ''} → ${d.site_id ?? ''}`,
          h('span', { class: 'muted small' },
            ` · ${d.attempts ?? 0} attempt(s)`,
            d.committed_at ? ` · committed ${formatDateTime(d.committed_at)}`
              : d.sent_at ? ` · sent ${formatDateTime(d.sent_at)}`
                : d.next_attempt_at ? ` · next try ${formatDateTime(d.next_attempt_at)}` : ''),
          d.last_error ? h('div', { class: 'error small' }, d.last_error) : null)),
      );
      if (!items?.length) deliveriesList.append(h('li', { class: 'muted' }, 'No deliveries scheduled yet.'));
    } catch (err) {
      deliveriesList.replaceChildren(h('li', { class: 'error' }, message(err)));
    }
  }

  function startPolling() {
    if (pollTimer) return;
    loadDeliveries();
    pollTimer = setInterval(() => { if (!document.hidden) loadDeliveries(); }, DELIVERY_POLL_MS);
  }

  const onKey = (event) => {
    if (!(event.ctrlKey || event.metaKey) || dialog.open) return;
    if (event.key === 's' || event.key === 'S') {
      event.preventDefault();
      if (editable()) save(stateToKeep());
    } else if (event.key === 'Enter') {
      event.preventDefault();
      openSign();
    }
  };
  document.addEventListener('keydown', onKey);

  async function load() {
    if (!reporter) {
      // A site clerk reads the signed report of its own site, nothing before that.
      const id = study.report_id;
      report = null;
      if (id !== null && id !== undefined) {
        report = await api('GET', `/api/reports/${seg(id)}`).catch((err) => {
          if (err instanceof ApiError && err.status === 404) return null;
          throw err;
        });
      }
      if (disposed) return;
      if (!report) {
        fieldsBox.replaceChildren(h('p', { class: 'muted', testid: 'report-none' }, 'No signed report yet.'));
        saveBtn.hidden = prelimBtn.hidden = signBtn.hidden = addendumBtn.hidden = true;
        return;
      }
      render({ fields: true });
      return;
    }
    report = await api('GET', `/api/studies/${seg(study.study_id)}/report`);
    if (disposed) return;
    render({ fields: true });
    restoreLocal();
  }

  // Accepting or rejecting an AI finding, or editing the ECG, changes the draft on the
  // server; reload it unless the reader has unsaved edits (never overwritten).
  const onReviewed = async () => {
    if (dirty || busy || saving || !report) {
      if (dirty) replace(status, 'AI findings changed: save, then reload to see them');
      return;
    }
    try {
      await load();
    } catch (err) {
      showError(message(err));
    }
  };
  document.addEventListener('rdc:findings-reviewed', onReviewed);
  const beforeUnload = (event) => {
    if (dirty) event.preventDefault();
  };
  window.addEventListener('beforeunload', beforeUnload);
  // Leaving the tab: send what is typed now rather than at the next autosave.
  const onHidden = () => {
    if (document.hidden && dirty && editable()) save(stateToKeep(), { auto: true });
  };
  document.addEventListener('visibilitychange', onHidden);
  const autosave = setInterval(() => {
    if (dirty && editable() && !dialog.open) save(stateToKeep(), { auto: true });
  }, tuning('rdc.autosaveMs', AUTOSAVE_MS));

  (async () => {
    replace(status, 'Loading report…');
    try {
      await load();
      if (!dirty) replace(status, '');
    } catch (err) {
      showError(message(err));
      replace(status, '');
    }
  })();

  return () => {
    // Leaving the page: what is unsaved goes to the server (the local copy stays
    // until it has arrived).
    if (dirty && editable()) trackSave(save(stateToKeep(), { auto: true }));
    disposed = true;
    clearInterval(autosave);
    document.removeEventListener('keydown', onKey);
    document.removeEventListener('rdc:findings-reviewed', onReviewed);
    document.removeEventListener('visibilitychange', onHidden);
    window.removeEventListener('beforeunload', beforeUnload);
    if (pollTimer) clearInterval(pollTimer);
    if (dialog.open) dialog.close();
  };
}
