import { ApiError, api } from '../api.js';
import { formatDateTime, h, humanize, replace } from '../dom.js';

const DELIVERY_POLL_MS = 10_000;

function seg(v) {
  return encodeURIComponent(String(v));
}

function isSigned(version) {
  return Boolean(version?.signed_at) || ['final', 'amended', 'signed'].includes(version?.state);
}

/**
 * Reporting panel: template fields of the current version, save draft (Ctrl+S), sign
 * with a passphrase (Ctrl+Enter), addendum after signing, delivery status.
 * Returns a cleanup function.
 */
export function renderReportPanel(root, study) {
  let report = null;
  let dirty = false;
  let busy = false;
  let pollTimer = null;
  const fieldInputs = new Map();

  const status = h('span', { class: 'muted small', testid: 'report-status', 'aria-live': 'polite' });
  const error = h('p', { class: 'error', role: 'alert', testid: 'report-error', hidden: true });
  const stateBadge = h('span', { class: 'badge', testid: 'report-state' });
  const fieldsBox = h('div', { class: 'report-fields', testid: 'report-fields' });
  const saveBtn = h('button', { class: 'btn', type: 'button', testid: 'report-save', title: 'Save draft (Ctrl+S)' }, 'Save draft');
  const prelimBtn = h('button', { class: 'btn', type: 'button', testid: 'report-preliminary' }, 'Save preliminary');
  const signBtn = h('button', { class: 'btn primary', type: 'button', testid: 'report-sign', title: 'Sign (Ctrl+Enter)' }, 'Sign…');
  const addendumBtn = h('button', { class: 'btn', type: 'button', testid: 'report-addendum', hidden: true }, 'Addendum');
  const deliveriesList = h('ul', { class: 'deliveries', testid: 'delivery-status' });
  const deliveriesBox = h('div', { class: 'deliveries-box', hidden: true },
    h('h4', {}, 'Delivery to the site ',
      h('button', { class: 'btn small ghost', type: 'button', testid: 'delivery-refresh', onClick: () => loadDeliveries() }, '↻')),
    deliveriesList);

  // Passphrase dialog: the passphrase unlocks the reader's key server-side, never stored.
  const passphrase = h('input', { type: 'password', autocomplete: 'off', testid: 'sign-passphrase', id: 'sign-passphrase', required: true });
  const signError = h('p', { class: 'error', role: 'alert', testid: 'sign-error', hidden: true });
  const signConfirm = h('button', { class: 'btn primary', type: 'submit', testid: 'sign-confirm' }, 'Sign report');
  const signCancel = h('button', { class: 'btn', type: 'button', testid: 'sign-cancel' }, 'Cancel');
  const signForm = h('form', { method: 'dialog', class: 'sign-form' },
    h('h3', {}, 'Sign report'),
    h('p', { class: 'muted small' }, 'Signing freezes this version and sends it to the referring site.'),
    h('label', { for: 'sign-passphrase' }, 'Key passphrase'), passphrase, signError,
    h('div', { class: 'row' }, signCancel, signConfirm));
  const dialog = h('dialog', { class: 'sign-dialog', testid: 'sign-dialog' }, signForm);

  root.replaceChildren(
    h('h3', {}, 'Report ', stateBadge),
    error,
    fieldsBox,
    h('div', { class: 'report-actions' }, saveBtn, prelimBtn, signBtn, addendumBtn),
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

  function setDirty(value) {
    dirty = value;
    if (value) replace(status, 'Unsaved changes');
  }

  function render() {
    const version = current();
    const signed = isSigned(version);
    replace(stateBadge, report?.state ?? '');
    stateBadge.className = `badge rs-${String(report?.state ?? '').replace(/[^a-z]/g, '')}`;
    root.dataset.reportId = String(report?.id ?? '');
    fieldInputs.clear();
    fieldsBox.replaceChildren(
      h('div', { class: 'muted small' },
        `${report?.template ?? ''} · version ${version?.number ?? '?'}${version?.kind ? ` (${version.kind})` : ''}`,
        signed && version?.signed_by ? ` · signed by ${version.signed_by} ${formatDateTime(version.signed_at)}` : ''),
    );
    for (const [key, value] of Object.entries(version?.fields ?? {})) {
      const id = `report-field-${fieldInputs.size}`;
      const input = h('textarea', {
        id, rows: String(Math.min(12, Math.max(2, String(value ?? '').split('\n').length + 1))),
        testid: `report-field-${key}`, dataset: { field: key }, readonly: signed ? true : null,
        spellcheck: 'true',
      });
      input.value = value ?? '';
      input.addEventListener('input', () => setDirty(true));
      fieldInputs.set(key, input);
      fieldsBox.append(h('label', { for: id }, humanize(key)), input);
    }
    if (!fieldInputs.size) fieldsBox.append(h('p', { class: 'muted' }, 'This template has no fields.'));
    saveBtn.hidden = prelimBtn.hidden = signBtn.hidden = signed;
    addendumBtn.hidden = !signed;
    const anySigned = (report?.versions ?? []).some(isSigned);
    deliveriesBox.hidden = !anySigned;
    if (anySigned) startPolling();
  }

  function fields() {
    return Object.fromEntries([...fieldInputs].map(([k, input]) => [k, input.value]));
  }

  async function run(label, fn) {
    if (busy || !report) return false;
    busy = true;
    showError('');
    replace(status, label);
    for (const b of [saveBtn, prelimBtn, signBtn, addendumBtn]) b.disabled = true;
    try {
      await fn();
      return true;
    } catch (err) {
      showError(message(err));
      replace(status, dirty ? 'Unsaved changes' : '');
      return false;
    } finally {
      busy = false;
      for (const b of [saveBtn, prelimBtn, signBtn, addendumBtn]) b.disabled = false;
    }
  }

  async function save(state = 'draft') {
    return run('Saving…', async () => {
      report = await api('PUT', `/api/reports/${seg(report.id)}/draft`, { body: { fields: fields(), state } });
      setDirty(false);
      render();
      replace(status, `Saved ${new Date().toLocaleTimeString()}`);
    });
  }

  function openSign() {
    if (!report || isSigned(current())) return;
    passphrase.value = '';
    signError.hidden = true;
    dialog.showModal();
    passphrase.focus();
  }

  signCancel.addEventListener('click', () => dialog.close());
  signForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!passphrase.value) {
      replace(signError, 'Enter the passphrase of your signing key.');
      signError.hidden = false;
      return;
    }
    signConfirm.disabled = true;
    signError.hidden = true;
    try {
      if (dirty && !(await save(current()?.state === 'preliminary' ? 'preliminary' : 'draft'))) {
        throw new Error(error.textContent || 'The draft could not be saved.');
      }
      const version = current();
      report = await api('POST', `/api/reports/${seg(report.id)}/sign`, {
        body: { passphrase: passphrase.value, version: version?.number },
      });
      passphrase.value = '';
      dialog.close();
      render();
      replace(status, `Signed ${new Date().toLocaleTimeString()}`);
      loadDeliveries();
    } catch (err) {
      replace(signError, message(err));
      signError.hidden = false;
    } finally {
      signConfirm.disabled = false;
    }
  });

  saveBtn.addEventListener('click', () => save('draft'));
  prelimBtn.addEventListener('click', () => save('preliminary'));
  signBtn.addEventListener('click', openSign);
  addendumBtn.addEventListener('click', () => run('Starting addendum…', async () => {
    report = await api('POST', `/api/reports/${seg(report.id)}/addenda`, { body: { fields: {} } });
    setDirty(false);
    render();
    replace(status, 'Addendum started: edit, then sign it');
    fieldInputs.values().next().value?.focus();
  }));

  async function loadDeliveries() {
    if (!report) return;
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
      if (report && !isSigned(current())) save(current()?.state === 'preliminary' ? 'preliminary' : 'draft');
    } else if (event.key === 'Enter') {
      event.preventDefault();
      openSign();
    }
  };
  document.addEventListener('keydown', onKey);
  // Accepting or rejecting an AI finding changes the draft on the server; reload it
  // unless the reader has unsaved edits (those are never overwritten).
  const onReviewed = async () => {
    if (dirty || busy || !report) {
      if (dirty) replace(status, 'AI findings changed: save, then reload to see them');
      return;
    }
    try {
      report = await api('POST', `/api/studies/${seg(study.study_id)}/report`);
      render();
    } catch (err) {
      showError(message(err));
    }
  };
  document.addEventListener('rdc:findings-reviewed', onReviewed);
  const beforeUnload = (event) => {
    if (dirty) event.preventDefault();
  };
  window.addEventListener('beforeunload', beforeUnload);

  (async () => {
    replace(status, 'Loading report…');
    try {
      report = await api('POST', `/api/studies/${seg(study.study_id)}/report`);
      render();
      replace(status, '');
    } catch (err) {
      showError(message(err));
      replace(status, '');
    }
  })();

  return () => {
    document.removeEventListener('keydown', onKey);
    document.removeEventListener('rdc:findings-reviewed', onReviewed);
    window.removeEventListener('beforeunload', beforeUnload);
    if (pollTimer) clearInterval(pollTimer);
    if (dialog.open) dialog.close();
  };
}
