// @ts-check
// Single-page app: hash routes #/login, #/worklist, #/study/<id>, #/ecg, #/ecg/<id>,
// #/dashboard, #/admin, #/admin/front-door, #/pathology[/case/<id>[?slides=a,b] | /consults
// | /dashboard], #/lab[/critical | /qc | /dashboard | /result/<id> | /specimen/<acc> | /box/<code>].
import './styles.css';
import {
  ApiError, loadMe, logout, noteActivity, onUnauthorized, setReauthenticate, startKeepalive,
} from './api.js';
import { h, replace } from './dom.js';
import { renderLogin, signInDialog } from './pages/login.js';
import { renderWorklist } from './pages/worklist.js';
import { parseLabPath, seesLab, seesLabDashboard } from './pages/lab_format.js';

/** @typedef {import('./api.js').User} User */

const app = /** @type {HTMLElement} */ (document.getElementById('app')); // index.html's
/** @type {(() => void) | null} */
let disposeCurrent = null;
let navSeq = 0;
/** Stops the frozen-section pages banner of the page shown (pathologists). @type {(() => void) | null} */
let stopPagesBanner = null;

// Test hook (see README of the front end): filled in by the study viewer. Test builds
// only (`npm run build:test`, vite.config.js): the production bundle has no trace of it.
if (__RDC_TEST_HOOKS__) {
  window.__rdc = window.__rdc ?? {
    viewportReady: new Promise(() => {}),
    renderedImageCount: 0,
    getViewport: () => null,
  };
}

/** Where to go after signing in: the page asked for, never the sign-in page itself. */
const NEXT_KEY = 'rdc.next';

/** @param {string} hash */
function rememberNext(hash) {
  const target = hash && hash !== '#' && !/^#\/?login\b/.test(hash) ? hash : '#/worklist';
  sessionStorage.setItem(NEXT_KEY, target);
}

function takeNext() {
  const next = sessionStorage.getItem(NEXT_KEY);
  sessionStorage.removeItem(NEXT_KEY);
  return next && !/^#\/?login\b/.test(next) ? next : '#/worklist';
}

/** @param {string} hash */
export function navigate(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

/**
 * @returns {{ name: 'study', studyId: string } | { name: 'ecg-reading', ecgId: string }
 *   | { name: 'ecg' } | { name: 'login' } | { name: 'admin' } | { name: 'admin-front-door' }
 *   | { name: 'dashboard' } | { name: 'worklist' } | { name: 'pathology' }
 *   | { name: 'pathology-case', caseId: string, slides: number[] } | { name: 'pathology-consults' }
 *   | { name: 'pathology-dashboard' } | import('./pages/lab_format.js').LabRoute}
 */
function parseRoute() {
  const path = window.location.hash.replace(/^#/, '') || '/worklist';
  const study = /^\/study\/([^/?]+)$/.exec(path);
  if (study) return { name: 'study', studyId: decodeURIComponent(study[1]) };
  const ecg = /^\/ecg\/([^/?]+)$/.exec(path);
  if (ecg) return { name: 'ecg-reading', ecgId: decodeURIComponent(ecg[1]) };
  if (path === '/ecg') return { name: 'ecg' };
  if (path.startsWith('/login')) return { name: 'login' };
  if (path === '/admin') return { name: 'admin' };
  if (path === '/admin/front-door') return { name: 'admin-front-door' };
  if (path === '/dashboard') return { name: 'dashboard' };
  const pathologyCase = /^\/pathology\/case\/([^/?]+)(?:\?(.*))?$/.exec(path);
  if (pathologyCase) {
    const slides = new URLSearchParams(pathologyCase[2] ?? '').get('slides') ?? '';
    return { name: 'pathology-case', caseId: decodeURIComponent(pathologyCase[1]),
      slides: slides.split(',').map(Number).filter((n) => Number.isInteger(n) && n > 0).slice(0, 2) };
  }
  if (path === '/pathology/consults') return { name: 'pathology-consults' };
  if (path === '/pathology/dashboard') return { name: 'pathology-dashboard' };
  if (path === '/pathology') return { name: 'pathology' };
  return parseLabPath(path) ?? { name: 'worklist' };
}

/** Roles that may see the turnaround dashboard (viewer/worklist_api.py Manager). */
const DASHBOARD_ROLES = ['admin', 'radiologist', 'cardiologist', 'pathologist', 'lab_reviewer'];

/**
 * @param {{ roles?: unknown } | null | undefined} user
 * @param {...string} roles
 */
function hasRole(user, ...roles) {
  const own = user?.roles;
  return Array.isArray(own) && own.some((r) => roles.includes(r));
}

/** Roles that read patient data (viewer/auth.py READING_ROLES); admin is not one. */
const READING_ROLES = ['radiologist', 'cardiologist', 'pathologist', 'lab_reviewer', 'site_user'];

const canSeeAdmin = (/** @type {User} */ user) => hasRole(user, 'admin');
const canRead = (/** @type {User} */ user) => hasRole(user, ...READING_ROLES);

/**
 * A user's home page: the worklist for readers, account management for an admin.
 * @param {User} user
 */
function homeOf(user) {
  // A lab reviewer with no imaging, ECG or pathology role lands on the held lab results,
  // not on an imaging worklist they have nothing to read in.
  if (hasRole(user, 'lab_reviewer') && !hasRole(user, 'radiologist', 'cardiologist', 'pathologist')) return '#/lab';
  if (canRead(user)) return '#/worklist';
  return canSeeAdmin(user) ? '#/admin' : '#/dashboard';
}
const canSeeDashboard = (/** @type {User} */ user) => hasRole(user, ...DASHBOARD_ROLES);
const canSeeEcg = (/** @type {User} */ user) => hasRole(user, 'cardiologist');
/** The pathology area: pathologists read, an admin oversees, a county site user sees its site's cases. */
const canSeePathology = (/** @type {User} */ user) => hasRole(user, 'pathologist', 'admin', 'site_user');

/** A link of a navigation bar. @typedef {(name: string, href: string, testid: string, label: string) => HTMLAnchorElement} NavLink */

/**
 * The admin area's pages: accounts, and the DICOM front door.
 * @param {string} current  the route shown
 */
function adminTabs(current) {
  /** @type {NavLink} */
  const tab = (name, href, testid, label) => h('a', {
    href, testid, class: current === name ? 'active' : null,
    'aria-current': current === name ? 'page' : null,
  }, label);
  return h('nav', { class: 'subnav', 'aria-label': 'Administration' },
    tab('admin', '#/admin', 'admin-tab-accounts', 'Accounts'),
    tab('admin-front-door', '#/admin/front-door', 'admin-tab-front-door', 'DICOM front door'));
}

/**
 * @param {User} user
 * @param {string} current  the area shown
 */
function header(user, current) {
  /** @type {NavLink} */
  const link = (name, href, testid, label) => h('a', {
    href, testid, class: current === name ? 'active' : null,
    'aria-current': current === name ? 'page' : null,
  }, label);
  return h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: homeOf(user) }, 'RDC Reading'),
    h('nav', {},
      canRead(user) ? link('worklist', '#/worklist', 'nav-worklist', 'Worklist') : null,
      canSeeEcg(user) ? link('ecg', '#/ecg', 'nav-ecg', 'ECG') : null,
      canSeePathology(user) ? link('pathology', '#/pathology', 'nav-pathology', 'Pathology') : null,
      seesLab(user) ? link('lab', hasRole(user, 'lab_reviewer') ? '#/lab' : '#/lab/critical', 'nav-lab', 'Lab') : null,
      canSeeDashboard(user) ? link('dashboard', '#/dashboard', 'nav-dashboard', 'Dashboard') : null,
      canSeeAdmin(user) ? link('admin', '#/admin', 'nav-admin', 'Admin') : null),
    h('span', { class: 'spacer' }),
    h('span', { class: 'user', testid: 'current-user' }, user.display_name || user.username),
    h(
      'button',
      {
        class: 'btn ghost',
        type: 'button',
        testid: 'logout-button',
        onClick: async () => {
          // Close the page first: a report panel sends its unsaved text, and sign-out
          // waits for it (api.js logout).
          if (disposeCurrent) {
            const dispose = disposeCurrent;
            disposeCurrent = null;
            try {
              dispose();
            } catch (err) {
              console.warn('page cleanup failed', err);
            }
          }
          await logout().catch(() => {});
          sessionStorage.removeItem(NEXT_KEY);
          navigate('#/login');
        },
      },
      'Sign out',
    ),
  );
}

async function route() {
  const seq = ++navSeq;
  stopPagesBanner?.();
  stopPagesBanner = null;
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
    disposeCurrent = renderLogin(app, { onSuccess: () => navigate(takeNext()) });
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
    rememberNext(window.location.hash);
    navigate('#/login');
    return;
  }
  sessionStorage.removeItem(NEXT_KEY);
  if (r.name === 'worklist' && homeOf(user) !== '#/worklist') {
    // An administrator reads no patient data: the home page is account management; a
    // lab reviewer's is the held lab results.
    navigate(homeOf(user));
    return;
  }
  const main = h('main', { class: `page page-${r.name}` });
  const area = /** @type {Record<string, string>} */ ({ 'ecg-reading': 'ecg', 'admin-front-door': 'admin' })[r.name]
    ?? (r.name.startsWith('pathology') ? 'pathology' : r.name.startsWith('lab') ? 'lab' : r.name);
  replace(app, header(user, area), main);
  if (hasRole(user, 'pathologist')) {
    // A frozen section's page shows over every page (a separate chunk).
    const { mountPagesBanner } = await import('./pages/pathology_pages.js');
    if (seq !== navSeq) return;
    stopPagesBanner = mountPagesBanner(main);
  }
  if (hasRole(user, 'site_user')) {
    // A critical value of the site waiting for acknowledgement shows over every page.
    const { mountCriticalAlert } = await import('./pages/lab_alerts.js');
    if (seq !== navSeq) return;
    const stopPathology = stopPagesBanner;
    const stopAlert = mountCriticalAlert(main);
    stopPagesBanner = () => { stopPathology?.(); stopAlert(); };
  }
  if (((r.name === 'admin' || r.name === 'admin-front-door') && !canSeeAdmin(user)) || (r.name === 'dashboard' && !canSeeDashboard(user))
    || (r.name === 'study' && !canRead(user))
    || ((r.name === 'ecg' || r.name === 'ecg-reading') && !canSeeEcg(user))
    || (r.name.startsWith('pathology') && !canSeePathology(user))
    || (r.name === 'lab-dashboard' ? !seesLabDashboard(user) : r.name.startsWith('lab') && !seesLab(user))) {
    replace(main, h('p', { class: 'error page-error', role: 'alert', testid: 'page-forbidden' },
      'You are not allowed to see this page.'));
    return;
  }
  if (r.name === 'admin-front-door') {
    main.append(adminTabs(r.name));
    const { renderFrontDoor } = await import('./pages/front_door.js');
    if (seq !== navSeq) return;
    disposeCurrent = renderFrontDoor(main);
  } else if (r.name === 'admin' || r.name === 'dashboard') {
    if (r.name === 'admin') main.append(adminTabs(r.name));
    // Small pages most users never open: separate chunks, like the viewer.
    /** @type {(root: HTMLElement, ctx: PageContext) => () => void} */
    const page = r.name === 'admin'
      ? (await import('./pages/admin.js')).renderAdmin
      : (await import('./pages/dashboard.js')).renderDashboard;
    if (seq !== navSeq) return;
    disposeCurrent = page(main, { navigate, user });
  } else if (r.name === 'ecg' || r.name === 'ecg-reading') {
    // The ECG screens: a separate chunk, for cardiologists only.
    const { renderEcgQueue, renderEcg } = await import('./pages/ecg.js');
    if (seq !== navSeq) return;
    disposeCurrent = r.name === 'ecg'
      ? renderEcgQueue(main, { navigate, user })
      : renderEcg(main, r.ecgId, { navigate, user });
  } else if (r.name === 'pathology' || r.name === 'pathology-case' || r.name === 'pathology-consults'
    || r.name === 'pathology-dashboard') {
    // The pathology screens (OpenSeadragon included): separate chunks.
    /** @type {() => void} */
    let dispose;
    if (r.name === 'pathology-case') {
      const { renderPathologyCase } = await import('./pages/pathology_case.js');
      if (seq !== navSeq) return;
      dispose = renderPathologyCase(main, r.caseId, r.slides, { navigate, user });
    } else if (r.name === 'pathology-consults') {
      const { renderPathologyConsults } = await import('./pages/pathology_consults.js');
      if (seq !== navSeq) return;
      dispose = renderPathologyConsults(main, { navigate, user });
    } else if (r.name === 'pathology-dashboard') {
      const { renderPathologyDashboard } = await import('./pages/pathology_dashboard.js');
      if (seq !== navSeq) return;
      dispose = renderPathologyDashboard(main, { navigate, user });
    } else {
      const { renderPathologyWorklist } = await import('./pages/pathology.js');
      if (seq !== navSeq) return;
      dispose = renderPathologyWorklist(main, { navigate, user });
    }
    disposeCurrent = dispose;
  } else if (r.name.startsWith('lab')) {
    // The lab screens: a separate chunk.
    const { renderLab } = await import('./pages/lab_pages.js');
    if (seq !== navSeq) return;
    disposeCurrent = renderLab(main, /** @type {import('./pages/lab_format.js').LabRoute} */ (r), { navigate, user });
  } else if (r.name === 'study') {
    // The viewer (Cornerstone3D, vtk.js, codecs) is a separate chunk: the login page and
    // the worklist stay light.
    const { renderStudy } = await import('./pages/study.js');
    if (seq !== navSeq) return;
    disposeCurrent = renderStudy(main, r.studyId, { navigate });
  } else {
    disposeCurrent = renderWorklist(main, { navigate, user });
  }
}

// A session that ends while someone works: sign in again over the page (api.js retries
// what failed). Only when they choose to leave does the app go to the sign-in page.
setReauthenticate((username) => signInDialog(username));
onUnauthorized(() => {
  if (parseRoute().name !== 'login') {
    rememberNext(window.location.hash);
    navigate('#/login');
  }
});
// Typing or clicking is work: keep the session from going idle meanwhile.
for (const type of ['keydown', 'input', 'pointerdown', 'wheel']) {
  document.addEventListener(type, noteActivity, { capture: true, passive: true });
}
startKeepalive();

window.addEventListener('hashchange', route);
route();


