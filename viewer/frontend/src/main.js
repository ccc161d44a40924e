// Single-page app: hash routes #/login, #/worklist, #/study/<id>.
import './styles.css';
import { ApiError, loadMe, logout, onUnauthorized } from './api.js';
import { h, replace } from './dom.js';
import { renderLogin } from './pages/login.js';
import { renderWorklist } from './pages/worklist.js';

const app = document.getElementById('app');
let disposeCurrent = null;
let navSeq = 0;

// Test hook (see README of the front end): filled in by the study viewer.
window.__rdc = window.__rdc ?? {
  viewportReady: new Promise(() => {}),
  renderedImageCount: 0,
  getViewport: () => null,
};

export function navigate(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

function parseRoute() {
  const path = window.location.hash.replace(/^#/, '') || '/worklist';
  const study = /^\/study\/([^/?]+)$/.exec(path);
  if (study) return { name: 'study', studyId: decodeURIComponent(study[1]) };
  if (path.startsWith('/login')) return { name: 'login' };
  return { name: 'worklist' };
}

function header(user) {
  return h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: '#/worklist' }, 'RDC Reading'),
    h('nav', {}, h('a', { href: '#/worklist', testid: 'nav-worklist' }, 'Worklist')),
    h('span', { class: 'spacer' }),
    h('span', { class: 'user', testid: 'current-user' }, user.display_name || user.username),
    h(
      'button',
      {
        class: 'btn ghost',
        type: 'button',
        testid: 'logout-button',
        onClick: async () => {
          await logout().catch(() => {});
          navigate('#/login');
        },
      },
      'Sign out',
    ),
  );
}

async function route() {
  const seq = ++navSeq;
  if (disposeCurrent) {
    try {
      disposeCurrent();
    } catch (err) {
      console.warn('page cleanup failed', err);
    }
    disposeCurrent = null;
  }
  const r = parseRoute();
  if (r.name === 'login') {
    replace(app);
    disposeCurrent = renderLogin(app, { onSuccess: () => navigate(sessionStorage.getItem('rdc.next') || '#/worklist') });
    return;
  }
  let user;
  try {
    user = await loadMe();
  } catch (err) {
    replace(app, h('p', { class: 'error page-error', role: 'alert' }, err instanceof ApiError ? err.message : String(err)));
    return;
  }
  if (seq !== navSeq) return;
  if (!user) {
    sessionStorage.setItem('rdc.next', window.location.hash || '#/worklist');
    navigate('#/login');
    return;
  }
  sessionStorage.removeItem('rdc.next');
  const main = h('main', { class: `page page-${r.name}` });
  replace(app, header(user), main);
  if (r.name === 'study') {
    // The viewer (Cornerstone3D, vtk.js, codecs) is a separate chunk: the login page and
    // the worklist stay light.
    const { renderStudy } = await import('./pages/study.js');
    if (seq !== navSeq) return;
    disposeCurrent = renderStudy(main, r.studyId, { navigate });
  } else {
    disposeCurrent = renderWorklist(main, { navigate, user });
  }
}

onUnauthorized(() => {
  if (parseRoute().name !== 'login') {
    sessionStorage.setItem('rdc.next', window.location.hash || '#/worklist');
    navigate('#/login');
  }
});

window.addEventListener('hashchange', route);
route();


