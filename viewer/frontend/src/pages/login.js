// @ts-check
import { ApiError, login } from '../api.js';
import { h, replace } from '../dom.js';

/**
 * The sign-in fields (username, password, TOTP code) and their submit logic.
 * `username`: fixed (read-only) when the same person signs in again over a page.
 * `prefix`: the ids and test ids of the fields (two forms can be on one page).
 *
 * @param {{ prefix: string, username?: string, onSuccess: () => void,
 *   intro: DomChild[], extra?: DomChild[] }} options
 */
function signInForm({ prefix, username: fixedUsername, onSuccess, intro, extra = [] }) {
  const error = h('p', { class: 'error', role: 'alert', testid: `${prefix}-error`, hidden: true });
  const username = h('input', {
    id: `${prefix}-username`, name: 'username', autocomplete: 'username', required: true,
    autofocus: !fixedUsername, testid: `${prefix}-username`,
    readonly: fixedUsername ? true : null,
  });
  if (fixedUsername) username.value = fixedUsername;
  const password = h('input', {
    id: `${prefix}-password`, name: 'password', type: 'password', autocomplete: 'current-password',
    required: true, testid: `${prefix}-password`,
  });
  const totp = h('input', {
    id: `${prefix}-totp`, name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code',
    pattern: '[0-9]{6,8}', maxlength: '8', required: true, testid: `${prefix}-totp`,
    placeholder: '6-digit code',
  });
  const submit = h('button', { class: 'btn primary', type: 'submit', testid: `${prefix}-submit` }, 'Sign in');

  const form = h(
    'form',
    { class: extra.length ? 'sign-form reauth-form' : 'login-card', testid: `${prefix}-form`, novalidate: true },
    intro,
    h('label', { for: `${prefix}-username` }, 'Username'),
    username,
    h('label', { for: `${prefix}-password` }, 'Password'),
    password,
    h('label', { for: `${prefix}-totp` }, 'Authenticator code'),
    totp,
    error,
    extra.length ? h('div', { class: 'row' }, extra, submit) : submit,
  );

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    const code = totp.value.replace(/\s+/g, '');
    if (!username.value.trim() || !password.value || !code) {
      replace(error, 'Enter your username, password and the code from your authenticator app.');
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    replace(submit, 'Signing in…');
    try {
      await login(username.value.trim(), password.value, code);
      password.value = '';
      totp.value = '';
      onSuccess();
    } catch (err) {
      replace(error, err instanceof ApiError ? err.message : 'Sign-in failed.');
      error.hidden = false;
      totp.value = '';
      totp.focus();
    } finally {
      submit.disabled = false;
      replace(submit, 'Sign in');
    }
  });
  const focus = () => (fixedUsername ? password : username).focus();
  return { form, focus };
}

/** Login form: username, password, TOTP code. Returns a cleanup function. */
/**
 * @param {HTMLElement} root
 * @param {{ onSuccess: () => void }} options
 */
export function renderLogin(root, { onSuccess }) {
  const { form, focus } = signInForm({
    prefix: 'login',
    onSuccess,
    intro: [h('h1', {}, 'Regional Diagnostic Center'),
      h('p', { class: 'muted' }, 'Remote reading — sign in with your password and authenticator code.')],
  });
  root.append(h('main', { class: 'page page-login' }, form));
  focus();
  return () => {};
}

/**
 * The session ended while `username` was working: a sign-in dialog over the page, so
 * that nothing typed on it is lost. Resolves once the same person has signed in again;
 * rejects if they choose to leave for the sign-in page instead.
 * @param {string} username
 * @returns {Promise<void>}
 */
export function signInDialog(username) {
  return /** @type {Promise<void>} */ (new Promise((resolve, reject) => {
    const leave = h('button', { class: 'btn', type: 'button', testid: 'reauth-leave' }, 'Go to the sign-in page');
    // Where the reader was (the report text): typing goes on there afterwards.
    const previous = document.activeElement;
    /** @type {HTMLDialogElement | null} */
    let dialog = null;
    const done = () => {
      dialog?.close();
      dialog?.remove();
      if (previous instanceof HTMLElement && previous.isConnected) {
        previous.blur();
        previous.focus({ preventScroll: true });
      }
    };
    const { form, focus } = signInForm({
      prefix: 'reauth',
      username,
      onSuccess: () => {
        done();
        resolve();
      },
      intro: [h('h2', {}, 'Your session has ended'),
        h('p', { class: 'muted', testid: 'reauth-message' },
          'Sign in again to go on: what you typed on this page is kept, and what was being sent is sent again.')],
      extra: [leave],
    });
    dialog = h('dialog', { class: 'sign-dialog reauth-dialog', testid: 'reauth-dialog', 'aria-modal': 'true' }, form);
    // Escape would close the dialog and leave the request hanging: not offered.
    dialog.addEventListener('cancel', (event) => event.preventDefault());
    leave.addEventListener('click', () => {
      done();
      reject(new ApiError(401, 'Your session has ended; please sign in again.'));
    });
    document.body.append(dialog);
    dialog.showModal();
    focus();
  }));
}
