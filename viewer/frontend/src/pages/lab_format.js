// @ts-check
// The lab screens' pure rules, apart from the DOM so that they are unit-tested
// (frontend/tests/lab_format.test.js): who sees which lab page, the lab routes, how a
// held result reads (value, flag, QC status and its Westgard rule, HIL, rules fired,
// delta history), the worklist's order (critical first, then age), what may be signed,
// a read-back's check before it is sent, and the Levey-Jennings chart's geometry.

/** Roles that review and sign held results (viewer/api/lab.py Reviewer). */
export const REVIEWER_ROLES = ['lab_reviewer'];
/** Roles that see the lab area: reviewers, and county accounts (their critical values). */
export const LAB_AREA_ROLES = ['lab_reviewer', 'site_user'];
/** Roles that see the critical-value dashboard (viewer/api/lab.py Overseer). */
export const LAB_DASHBOARD_ROLES = ['lab_reviewer', 'admin'];
/** Reviewer decisions other than signing (lab.review.review). */
export const REVIEW_ACTIONS = ['release', 'rerun', 'reject'];
/** @type {Record<string, string>} */
export const ACTION_LABELS = { release: 'Release QC hold', rerun: 'Rerun', reject: 'Reject' };
/** Chain-of-custody steps, in order (lab/states.py CustodyStep). */
export const CUSTODY_STEPS = ['ordered', 'collected', 'packed', 'courier', 'received', 'accessioned',
  'aliquoted', 'on_analyzer', 'stored', 'disposed', 'rejected'];

/**
 * @param {{ roles?: unknown } | null | undefined} user
 * @param {string[]} roles
 */
export function hasAnyRole(user, roles) {
  const own = user?.roles;
  return Array.isArray(own) && own.some((r) => roles.includes(r));
}

/** @param {{ roles?: unknown } | null | undefined} user */
export const isLabReviewer = (user) => hasAnyRole(user, REVIEWER_ROLES);
/** @param {{ roles?: unknown } | null | undefined} user */
export const seesLab = (user) => hasAnyRole(user, LAB_AREA_ROLES);
/** @param {{ roles?: unknown } | null | undefined} user */
export const seesLabDashboard = (user) => hasAnyRole(user, LAB_DASHBOARD_ROLES);

/**
 * @typedef {{ name: 'lab' } | { name: 'lab-critical' } | { name: 'lab-qc' } | { name: 'lab-dashboard' }
 *   | { name: 'lab-result', resultId: string } | { name: 'lab-specimen', accession: string }
 *   | { name: 'lab-box', boxCode: string }} LabRoute
 */

/** Accessions and box codes as the server takes them (viewer/lab_views.py). */
const CODE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/**
 * The lab page a hash path names, or null when it is not a lab path.
 * @param {string} path  the hash without '#', e.g. '/lab/result/12'
 * @returns {LabRoute | null}
 */
export function parseLabPath(path) {
  if (path === '/lab') return { name: 'lab' };
  if (path === '/lab/critical') return { name: 'lab-critical' };
  if (path === '/lab/qc') return { name: 'lab-qc' };
  if (path === '/lab/dashboard') return { name: 'lab-dashboard' };
  const result = /^\/lab\/result\/([1-9][0-9]{0,11})$/.exec(path);
  if (result) return { name: 'lab-result', resultId: result[1] };
  const spec = /^\/lab\/specimen\/([^/?]+)$/.exec(path);
  if (spec) {
    const accession = safeDecode(spec[1]);
    return accession !== null && CODE.test(accession) ? { name: 'lab-specimen', accession } : { name: 'lab' };
  }
  const box = /^\/lab\/box\/([^/?]+)$/.exec(path);
  if (box) {
    const boxCode = safeDecode(box[1]);
    return boxCode !== null && CODE.test(boxCode) ? { name: 'lab-box', boxCode } : { name: 'lab' };
  }
  return null;
}

/** @param {string} text */
function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

/** @param {unknown} value */
export function isValidCode(value) {
  return typeof value === 'string' && CODE.test(value);
}

/**
 * A result's value as the lab reports it: the analyzer's text when there is one
 * ("<0.01"), else the number; units after it.
 * @param {Record<string, any> | null | undefined} r
 */
export function valueText(r) {
  if (!r) return '';
  const raw = r.value_text || (r.value === null || r.value === undefined ? '' : String(r.value));
  const v = String(raw).trim();
  if (!v) return '—';
  return r.units ? `${v} ${r.units}` : v;
}

/**
 * The abnormal flag's badge: HH/LL critical, H/L abnormal, '' normal.
 * @param {Record<string, any> | null | undefined} r
 * @returns {{ label: string, cls: string }}
 */
export function flagBadge(r) {
  const flag = String(r?.abnormal_flag ?? r?.flag ?? '');
  if (r?.critical || flag === 'HH' || flag === 'LL') {
    return { label: flag || 'CRIT', cls: 'badge crit' };
  }
  if (flag) return { label: flag, cls: 'badge prio-urgent' };
  return { label: '', cls: '' };
}

/**
 * The reference range "3.5–5.1" (or "< 5.0", "> 60").
 * @param {Record<string, any> | null | undefined} r
 */
export function rangeText(r) {
  const lo = r?.ref_low;
  const hi = r?.ref_high;
  const has = (/** @type {unknown} */ v) => v !== null && v !== undefined && v !== '';
  if (has(lo) && has(hi)) return `${lo}–${hi}`;
  if (has(hi)) return `< ${hi}`;
  if (has(lo)) return `> ${lo}`;
  return '';
}

/**
 * The QC line of a held result: "QC reject: 1-3s, R-4s (CHEM1 run R7)", "QC warning:
 * 1-2s", "QC accept", or '' when nothing is known.  The worklist gives the run's status
 * for the analyte ({status, rules}) and, when the control failed, the hold's text.
 * @param {Record<string, any> | null | undefined} r
 */
export function qcText(r) {
  const qc = r?.qc_status ?? r?.qc ?? null;
  const status = typeof qc === 'string' ? qc : String(qc?.status ?? '');
  const rules = Array.isArray(qc?.rules) ? qc.rules.map(String) : [];
  const hold = String(r?.qc_hold ?? '');
  if (hold && !rules.length) {
    const m = /:\s*(.+)$/.exec(hold);
    if (m) rules.push(...m[1].split(/,\s*/).filter(Boolean));
  }
  const label = status || (hold ? 'reject' : '');
  if (!label) return '';
  return rules.length ? `QC ${label}: ${rules.join(', ')}` : `QC ${label}`;
}

/**
 * The Westgard rules of a result's QC, for checks: ['1-3s'].
 * @param {Record<string, any> | null | undefined} r
 * @returns {string[]}
 */
export function westgardRules(r) {
  const text = qcText(r);
  const m = /^QC \w+: (.+)$/.exec(text);
  return m ? m[1].split(', ') : [];
}

/**
 * HIL indices as "H 120 · I 2 · L 10" ('' without any).
 * @param {unknown} hil
 */
export function hilText(hil) {
  if (!hil || typeof hil !== 'object') return '';
  const parts = Object.entries(/** @type {Record<string, unknown>} */ (hil))
    .filter(([, v]) => v !== null && v !== undefined && v !== '')
    .sort(([a], [b]) => 'HIL'.indexOf(a) - 'HIL'.indexOf(b))
    .map(([k, v]) => `${k} ${v}`);
  return parts.join(' · ');
}

/**
 * The rules that fired: [{rule, message, severity}] → readable lines, holds first.
 * @param {unknown} fired
 * @returns {{ rule: string, message: string, severity: string }[]}
 */
export function firedRules(fired) {
  if (!Array.isArray(fired)) return [];
  const rows = fired.map((f) => {
    const rule = String(f?.rule ?? '');
    const text = String(f?.message ?? '');
    // A message that starts with its rule's name reads once, not twice.
    const message = text.startsWith(`${rule}:`) ? text.slice(rule.length + 1).trim() : text;
    return { rule, message, severity: String(f?.severity ?? 'hold') };
  }).filter((f) => f.rule);
  return rows.sort((a, b) => Number(b.severity === 'hold') - Number(a.severity === 'hold'));
}

/**
 * The delta history: the patient's previous results of the test, newest first.
 * @param {Record<string, any> | null | undefined} r
 * @returns {{ value: string, at: string }[]}
 */
export function deltaHistory(r) {
  const rows = r?.delta_history ?? r?.history ?? r?.previous ?? [];
  if (!Array.isArray(rows)) return [];
  return rows.map((p) => ({
    value: String(p?.value_text || (p?.value ?? '')),
    at: String(p?.measured_at ?? p?.at ?? ''),
  })).sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
}

/**
 * The worklist's order, as the server's (lab.review.held_worklist): critical first,
 * then the oldest measurement; the id breaks ties.
 * @param {Record<string, any>[]} rows
 */
export function sortHeld(rows) {
  const t = (/** @type {Record<string, any>} */ r) => {
    const v = Date.parse(String(r.measured_at ?? r.created_at ?? ''));
    return Number.isNaN(v) ? Infinity : v;
  };
  return [...rows].sort((a, b) => Number(Boolean(b.critical)) - Number(Boolean(a.critical))
    || t(a) - t(b) || Number(a.id) - Number(b.id));
}

/**
 * Whether a held result may be signed as it is: not under a QC hold (release or rerun
 * it first), and not rejected or waiting for a rerun.
 * @param {Record<string, any> | null | undefined} r
 */
export function canSign(r) {
  if (!r) return false;
  if (r.qc_hold) return false;
  return ['held', 'autoverified'].includes(String(r.state ?? ''));
}

/**
 * Check a read-back before it is sent: a number, equal to the value as the lab sent it
 * ("6.9" for 6.9 or 6.90). The server is the judge (lab.critical.readback_matches,
 * at the test's decimals); this only says so before anything is sent.
 * @param {string} readback
 * @param {unknown} sent  the value as sent (value_text, else the number)
 * @returns {string}  '' when it matches, else why not
 */
export function readbackProblem(readback, sent) {
  const text = String(readback ?? '').trim();
  if (!text) return 'Read the value back as you heard it.';
  const number = /[<>]?\s*[-+]?[0-9]+(\.[0-9]+)?/.exec(text);
  if (!number) return 'The read-back must be the number you heard.';
  const expected = /[<>]?\s*[-+]?[0-9]+(\.[0-9]+)?/.exec(String(sent ?? ''));
  if (!expected) return '';
  const norm = (/** @type {string} */ v) => `${/[<>]/.exec(v)?.[0] ?? ''}${Number(v.replace(/[<>\s]/g, ''))}`;
  return norm(number[0]) === norm(expected[0]) ? '' : `The read-back ${text} does not match the value.`;
}

/**
 * A critical notice's state for its badge.
 * @param {Record<string, any> | null | undefined} n
 * @returns {{ label: string, cls: string }}
 */
export function noticeBadge(n) {
  const s = String(n?.state ?? '');
  if (s === 'acknowledged') return { label: 'Acknowledged', cls: 'badge review-accepted' };
  if (s === 'escalated') return { label: `Escalated (tier ${Number(n?.tier ?? 0)})`, cls: 'badge crit' };
  return { label: 'Awaiting acknowledgement', cls: 'badge prio-stat' };
}

/**
 * The custody timeline in time order (an event without a time last).
 * @param {unknown} events
 * @returns {Record<string, any>[]}
 */
export function timelineRows(events) {
  if (!Array.isArray(events)) return [];
  const t = (/** @type {Record<string, any>} */ e) => {
    const v = Date.parse(String(e.at ?? ''));
    return Number.isNaN(v) ? Infinity : v;
  };
  return [...events].sort((a, b) => t(a) - t(b));
}

/**
 * Seconds as the dashboard shows them ('—' for none).
 * @param {unknown} s
 */
export function secondsText(s) {
  if (s === null || s === undefined || s === '') return '—';
  const v = Number(s);
  if (Number.isNaN(v)) return '—';
  if (v < 120) return `${Math.round(v)} s`;
  if (v < 7200) return `${(v / 60).toFixed(1)} min`;
  return `${(v / 3600).toFixed(1)} h`;
}

/**
 * The Levey-Jennings chart's geometry: run index across, z from -4 to +4 SD up, the
 * mean and ±1/2/3 SD lines; points beyond ±4 SD are drawn at the edge.
 * @param {{ z: number, status?: string, rules?: string[] }[]} points
 * @param {{ width: number, height: number, pad?: number }} box
 */
export function ljGeometry(points, { width, height, pad = 30 }) {
  const n = Math.max(points.length, 1);
  const span = 4;
  const x = (/** @type {number} */ i) => pad + (n === 1 ? (width - 2 * pad) / 2 : (i * (width - 2 * pad)) / (n - 1));
  const y = (/** @type {number} */ z) => {
    const c = Math.max(-span, Math.min(span, z));
    return pad + ((span - c) * (height - 2 * pad)) / (2 * span);
  };
  return {
    lines: [-3, -2, -1, 0, 1, 2, 3].map((sd) => ({ sd, y: y(sd) })),
    dots: points.map((p, i) => ({
      x: x(i), y: y(Number(p.z)), z: Number(p.z), status: String(p.status ?? 'accept'),
      rules: Array.isArray(p.rules) ? p.rules : [],
    })),
  };
}
