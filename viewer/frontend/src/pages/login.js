import { ApiError, login } from '../api.js';
import { h, replace } from '../dom.js';

/** Login form: username, password, TOTP code. Returns a cleanup function. */
export function renderLogin(root, { onSuccess }) {
  const error = h('p', { class: 'error', role: 'alert', testid: 'login-error', hidden: true });
  const username = h('input', {
    id: 'login-username', name: 'username', autocomplete: 'username', required: true,
    autofocus: true, testid: 'login-username',
  });
  const password = h('input', {
    id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password',
    required: true, testid: 'login-password',
  });
  const totp = h('input', {
    id: 'login-totp', name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code',
    pattern: '[0-9]{6,8}', maxlength: '8', required: true, testid: 'login-totp',
    placeholder: '6-digit code',
  });
  const submit = h('button', { class: 'btn primary', type: 'submit', testid: 'login-submit' }, 'Sign in');

  const form = h(
    'form',
    { class: 'login-card', testid: 'login-form', novalidate: true },
    h('h1', {}, 'Regional Diagnostic Center'),
    h('p', { class: 'muted' }, 'Remote reading — sign in with your password and authenticator code.'),
    h('label', { for: 'login-username' }, 'Username'),
    username,
    h('label', { for: 'login-password' }, 'Password'),
    password,
    h('label', { for: 'login-totp' }, 'Authenticator code'),
    totp,
    error,
    submit,
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

  root.append(h('main', { class: 'page page-login' }, form));
  username.focus();
  return () => {};
}
