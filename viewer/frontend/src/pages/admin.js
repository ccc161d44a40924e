// @ts-check
// Account administration (admin role): list users, add one, disable / enable, reset TOTP.
// Usernames and display names are user-supplied: everything goes in as text (dom.js h()).
import { ApiError, api } from '../api.js';
import { formatDateTime, h, replace } from '../dom.js';

/** Every role the server accepts (viewer/accounts.py ROLES); admin is not a reading role. */
const ROLES = ['radiologist', 'cardiologist', 'pathologist', 'lab_reviewer', 'site_user', 'admin'];
const MIN_PASSWORD_LENGTH = 12;

/** @param {unknown} err */
function message(err) {
  return err instanceof ApiError ? err.message : String(/** @type {{ message?: unknown } | null} */ (err)?.message ?? err);
}

/** @param {unknown} sites  'all' or a list of site ids */
function sitesText(sites) {
  if (sites === 'all') return 'all sites';
  return Array.isArray(sites) && sites.length ? sites.join(', ') : '—';
}

/**
 * Admin page. `user` is the signed-in administrator (their own account cannot be
 * disabled: the server refuses, so the button is not offered). Returns a cleanup function.
 */
/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 */
export function renderAdmin(root, { user }) {
  let disposed = false;
  const error = h('p', { class: 'error', role: 'alert', testid: 'admin-error', hidden: true });
  const notice = h('p', { class: 'muted', role: 'status', testid: 'admin-notice', hidden: true });

  /** @param {string | null | undefined} text */
  function showError(text) {
    replace(error, text ?? '');
    error.hidden = !text;
  }
  /** @param {string | null | undefined} text */
  function showNotice(text) {
    replace(notice, text ?? '');
    notice.hidden = !text;
  }

  // The TOTP provisioning URI: shown once (after add or reset), as selectable text.
  const uriText = h('code', { class: 'uri', testid: 'admin-provisioning-uri' });
  const uriWho = h('strong');
  const uriBox = h('section', { class: 'panel provisioning', testid: 'admin-provisioning', hidden: true },
    h('h3', {}, 'Authenticator setup for ', uriWho),
    h('p', { class: 'muted small' },
      'Enter this otpauth:// URI in the user\u2019s authenticator app now. It is shown only once: '
      + 'it is not stored in the browser and cannot be retrieved later (reset TOTP to issue a new one).'),
    uriText,
    h('div', { class: 'row' },
      h('button', {
        class: 'btn small', type: 'button', testid: 'admin-provisioning-copy',
        onClick: async (/** @type {MouseEvent} */ ev) => {
          try {
            await navigator.clipboard.writeText(uriText.textContent ?? '');
            /** @type {HTMLElement} */ (ev.target).textContent = 'Copied';
          } catch {
            // No clipboard (insecure origin, permission): select the text for Ctrl+C instead.
            const range = document.createRange();
            range.selectNodeContents(uriText);
            window.getSelection()?.removeAllRanges();
            window.getSelection()?.addRange(range);
          }
        },
      }, 'Copy'),
      h('button', {
        class: 'btn small', type: 'button', testid: 'admin-provisioning-dismiss',
        onClick: () => hideUri(),
      }, 'Done, hide it')));

  /**
   * @param {string} username
   * @param {string} uri
   */
  function showUri(username, uri) {
    replace(uriWho, username);
    replace(uriText, uri);
    uriBox.hidden = false;
    uriBox.scrollIntoView?.({ block: 'nearest' });
  }
  function hideUri() {
    replace(uriText);
    replace(uriWho);
    uriBox.hidden = true;
  }

  // Users table ------------------------------------------------------------------
  const tbody = h('tbody');
  const table = h('table', { class: 'worklist admin-users', testid: 'admin-users' },
    h('thead', {}, h('tr', {},
      ['Username', 'Name', 'Roles', 'Sites', 'State', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))),
    tbody);

  /** An account as GET /api/admin/users lists it. @typedef {Record<string, any>} Account */

  /**
   * @param {Account} account
   * @param {'disable' | 'enable' | 'reset-totp'} action
   * @param {HTMLButtonElement} button
   */
  async function act(account, action, button) {
    if (action === 'disable'
      && !window.confirm(`Disable ${account.username}? Their sessions end at once.`)) return;
    if (action === 'reset-totp'
      && !window.confirm(`Issue a new TOTP secret for ${account.username}? Their current authenticator `
        + 'stops working and their sessions end.')) return;
    button.disabled = true;
    showError('');
    showNotice('');
    try {
      const data = await api('POST', `/api/admin/users/${encodeURIComponent(account.id)}/${action}`);
      if (disposed) return;
      if (action === 'reset-totp') {
        showUri(account.username, data?.provisioning_uri ?? '');
        showNotice(`New TOTP secret issued for ${account.username}.`);
      } else {
        hideUri();
        showNotice(`${account.username} ${action === 'disable' ? 'disabled' : 'enabled'}.`);
      }
      await load();
    } catch (err) {
      if (disposed) return;
      showError(message(err));
      button.disabled = false;
    }
  }

  /** @param {Account} account */
  function stateOf(account) {
    if (!account.enabled) return 'disabled';
    if (account.locked_until && Date.parse(account.locked_until) > Date.now()) return 'locked';
    return 'enabled';
  }

  /** @param {Account} account */
  function row(account) {
    const state = stateOf(account);
    const actions = h('div', { class: 'actions' });
    if (account.enabled) {
      if (account.id !== user?.id) {
        const b = h('button', { class: 'btn small reject', type: 'button', testid: 'admin-disable' }, 'Disable');
        b.addEventListener('click', () => act(account, 'disable', b));
        actions.append(b);
      }
      if (state === 'locked') {
        const b = h('button', { class: 'btn small', type: 'button', testid: 'admin-enable', title: 'Lift the sign-in lockout' }, 'Unlock');
        b.addEventListener('click', () => act(account, 'enable', b));
        actions.append(b);
      }
    } else {
      const b = h('button', { class: 'btn small accept', type: 'button', testid: 'admin-enable' }, 'Enable');
      b.addEventListener('click', () => act(account, 'enable', b));
      actions.append(b);
    }
    const reset = h('button', { class: 'btn small', type: 'button', testid: 'admin-reset-totp' }, 'Reset TOTP');
    reset.addEventListener('click', () => act(account, 'reset-totp', reset));
    actions.append(reset);
    return h('tr', {
      testid: 'admin-user-row',
      dataset: { userId: String(account.id), username: String(account.username), state },
      class: state === 'enabled' ? '' : 'inactive',
    },
    h('td', { class: 'strong', testid: 'admin-user-username' }, account.username ?? ''),
    h('td', { testid: 'admin-user-name' }, account.display_name ?? ''),
    h('td', {}, (account.roles ?? []).join(', ')),
    h('td', {}, sitesText(account.sites)),
    h('td', {},
      h('span', { class: `badge us-${state}`, testid: 'admin-user-state' }, state),
      state === 'locked' ? h('div', { class: 'muted small' }, `until ${formatDateTime(account.locked_until)}`) : null,
      state === 'disabled' && account.disabled_at
        ? h('div', { class: 'muted small' }, formatDateTime(account.disabled_at)) : null),
    h('td', { class: 'muted small' }, formatDateTime(account.created_at)),
    h('td', {}, actions));
  }

  async function load() {
    table.setAttribute('aria-busy', 'true');
    try {
      const users = await api('GET', '/api/admin/users');
      if (disposed) return;
      const list = Array.isArray(users) ? users : [];
      tbody.replaceChildren(...list.map(row));
      if (!list.length) {
        tbody.append(h('tr', {}, h('td', { colspan: '7', class: 'empty' }, 'No accounts yet.')));
      }
    } catch (err) {
      if (!disposed) showError(message(err));
    } finally {
      table.removeAttribute('aria-busy');
    }
  }

  // Add-user form ------------------------------------------------------------------
  const username = h('input', {
    id: 'admin-add-username', name: 'username', autocomplete: 'off', required: true,
    testid: 'admin-add-username', placeholder: 'e.g. j.doe', maxlength: '128',
  });
  const displayName = h('input', {
    id: 'admin-add-display-name', name: 'display_name', autocomplete: 'off', required: true,
    testid: 'admin-add-display-name', placeholder: 'Dr Jane Doe', maxlength: '200',
  });
  const password = h('input', {
    id: 'admin-add-password', name: 'password', type: 'password', autocomplete: 'new-password',
    required: true, testid: 'admin-add-password', minlength: String(MIN_PASSWORD_LENGTH),
    placeholder: `at least ${MIN_PASSWORD_LENGTH} characters`,
  });
  const roleBoxes = ROLES.map((role) => h('input', {
    type: 'checkbox', value: role, testid: `admin-add-role-${role}`, name: 'roles',
  }));
  const sites = h('input', {
    id: 'admin-add-sites', name: 'sites', autocomplete: 'off', testid: 'admin-add-sites',
    placeholder: 'site ids, comma separated',
  });
  const allSites = h('input', { type: 'checkbox', testid: 'admin-add-all-sites', name: 'all_sites' });
  allSites.addEventListener('change', () => { sites.disabled = allSites.checked; });
  const submit = h('button', { class: 'btn primary', type: 'submit', testid: 'admin-add-submit' }, 'Add user');

  const form = h('form', { class: 'panel admin-add', testid: 'admin-add-form', novalidate: true },
    h('h3', {}, 'Add a user'),
    h('div', { class: 'form-grid' },
      h('label', { for: 'admin-add-username' }, 'Username'), username,
      h('label', { for: 'admin-add-display-name' }, 'Display name'), displayName,
      h('label', { for: 'admin-add-password' }, 'Initial password'), password,
      h('span', { class: 'label' }, 'Roles'),
      h('div', { class: 'checks', role: 'group', 'aria-label': 'Roles' },
        roleBoxes.map((box) => h('label', { class: 'check' }, box, ` ${box.value}`))),
      h('label', { for: 'admin-add-sites' }, 'Sites'),
      h('div', { class: 'checks' }, sites,
        h('label', { class: 'check' }, allSites, ' all sites'))),
    h('div', { class: 'row' }, submit));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError('');
    showNotice('');
    const body = {
      username: username.value.trim(),
      display_name: displayName.value.trim(),
      password: password.value,
      roles: roleBoxes.filter((b) => b.checked).map((b) => b.value),
      sites: allSites.checked ? [] : sites.value.split(/[\s,]+/).filter(Boolean),
      all_sites: allSites.checked,
    };
    if (!body.username || !body.display_name) return showError('Username and display name are required.');
    if (body.password.length < MIN_PASSWORD_LENGTH) {
      return showError(`The initial password must be at least ${MIN_PASSWORD_LENGTH} characters.`);
    }
    if (!body.roles.length) return showError('Choose at least one role.');
    submit.disabled = true;
    try {
      const data = await api('POST', '/api/admin/users', { body });
      if (disposed) return;
      form.reset();
      sites.disabled = false;
      showUri(data?.user?.username ?? body.username, data?.provisioning_uri ?? '');
      showNotice(`User ${data?.user?.username ?? body.username} added.`);
      await load();
    } catch (err) {
      if (!disposed) showError(message(err));
    } finally {
      submit.disabled = false;
    }
  });

  root.append(
    h('section', { class: 'admin-page' },
      h('div', { class: 'toolbar' },
        h('h2', {}, 'User administration'),
        h('button', { class: 'btn', type: 'button', testid: 'admin-refresh', onClick: () => load() }, 'Refresh')),
      error,
      notice,
      uriBox,
      h('div', { class: 'table-wrap' }, table),
      form),
  );
  load();
  return () => {
    disposed = true;
    hideUri();
  };
}
