// @ts-check
// The pathology screens' pure rules, apart from the DOM so that they are unit-tested
// (frontend/tests/pathology_format.test.js): urgency and QC labels, the frozen-section
// timeline in its order, who may do what on a case, the case route's slide list, and
// what a consult shows to whom.

/** Roles that read, claim, annotate, consult and sign pathology cases. */
export const PATHOLOGIST_ROLES = ['pathologist'];
/** Roles that see the pathology area at all (a county site user: its own cases, read-only). */
export const PATHOLOGY_AREA_ROLES = ['pathologist', 'admin', 'site_user'];
/** The frozen-section timeline, in order (pathology/frozen.py). */
export const FROZEN_STEPS = ['received', 'qc', 'first_tile', 'call', 'signed'];
/** @type {Record<string, string>} */
export const STEP_LABELS = {
  received: 'Received', qc: 'QC done', first_tile: 'First view', call: 'Intra-op call',
  signed: 'Signed', amended: 'Amended', paged: 'Paged', escalated: 'Escalated', claimed: 'Claimed',
  consult_requested: 'Second opinion asked', consult_answered: 'Second opinion answered',
};
/** The dashboard's frozen-section intervals (pathology/dashboard.py), in order. */
export const FROZEN_INTERVALS = ['received_to_qc', 'qc_to_first_tile', 'first_tile_to_call', 'call_to_signed', 'received_to_signed'];
/** Concordance grades of a second opinion. */
export const CONCORDANCE = ['concordant', 'minor', 'major'];

/**
 * @param {{ roles?: unknown } | null | undefined} user
 * @param {string[]} roles
 */
export function hasAnyRole(user, roles) {
  const own = user?.roles;
  return Array.isArray(own) && own.some((r) => roles.includes(r));
}

/** @param {{ roles?: unknown } | null | undefined} user */
export const isPathologist = (user) => hasAnyRole(user, PATHOLOGIST_ROLES);
/** @param {{ roles?: unknown } | null | undefined} user */
export const seesPathology = (user) => hasAnyRole(user, PATHOLOGY_AREA_ROLES);

/**
 * The urgency badge: FROZEN, STAT or ROUTINE, and its class.
 * @param {unknown} urgency
 * @returns {{ label: string, cls: string }}
 */
export function urgencyBadge(urgency) {
  const u = String(urgency ?? '').toLowerCase();
  if (u === 'frozen') return { label: 'FROZEN', cls: 'prio prio-stat urg-frozen' };
  if (u === 'stat') return { label: 'STAT', cls: 'prio prio-stat' };
  return { label: 'ROUTINE', cls: 'prio prio-routine' };
}

/**
 * The QC cell of a case: "QC failed (2 slides)", "QC pass", "QC pending".
 * @param {{ qc?: unknown, qc_failed_slides?: unknown } | null | undefined} item
 */
export function qcText(item) {
  const qc = String(item?.qc ?? 'pending');
  if (qc === 'fail') {
    const n = Number(item?.qc_failed_slides) || 0;
    return n ? `QC failed (${n} slide${n === 1 ? '' : 's'})` : 'QC failed';
  }
  return qc === 'pass' ? 'QC pass' : 'QC pending';
}

/**
 * Whether `user` may claim the case now: a pathologist, the case open and held by no one.
 * @param {{ roles?: unknown } | null | undefined} user
 * @param {{ assigned_to?: unknown, state?: unknown } | null | undefined} item
 */
export function canClaim(user, item) {
  return isPathologist(user) && !item?.assigned_to && !['signed', 'amended', 'closed'].includes(String(item?.state ?? ''));
}

/**
 * The timeline events in time order; the frozen-section steps not reached yet follow as
 * pending (at null), so the reader sees what is still to come.
 * @param {{ step: string, at?: string | null, actor?: string | null }[]} events
 * @param {boolean} frozen
 * @returns {{ step: string, label: string, at: string | null, actor: string | null }[]}
 */
export function timelineRows(events, frozen) {
  const done = [...(events ?? [])]
    .filter((e) => e && e.step)
    .sort((a, b) => Date.parse(a.at ?? '') - Date.parse(b.at ?? ''))
    .map((e) => ({ step: e.step, label: STEP_LABELS[e.step] ?? e.step, at: e.at ?? null, actor: e.actor ?? null }));
  if (!frozen) return done;
  const seen = new Set(done.map((e) => e.step));
  const pending = FROZEN_STEPS.filter((s) => !seen.has(s))
    .map((s) => ({ step: s, label: STEP_LABELS[s], at: null, actor: null }));
  return [...done, ...pending];
}

/**
 * Seconds between two timeline steps, or null when either is missing.
 * @param {{ step: string, at: string | null }[]} rows
 * @param {string} from
 * @param {string} to
 */
export function stepSeconds(rows, from, to) {
  const a = rows.find((r) => r.step === from && r.at);
  const b = rows.find((r) => r.step === to && r.at);
  if (!a?.at || !b?.at) return null;
  return Math.round((Date.parse(b.at) - Date.parse(a.at)) / 1000);
}

/**
 * The case route: `#/pathology/case/<id>?slides=a,b` → the case id and the slides shown
 * side by side (at most two, numbers only).
 * @param {string} path  the hash without '#'
 * @returns {{ caseId: string, slides: number[] } | null}
 */
export function parseCasePath(path) {
  const m = /^\/pathology\/case\/([^/?]+)(?:\?(.*))?$/.exec(path);
  if (!m) return null;
  const params = new URLSearchParams(m[2] ?? '');
  const slides = (params.get('slides') ?? '').split(',')
    .map((s) => Number(s)).filter((n) => Number.isInteger(n) && n > 0).slice(0, 2);
  return { caseId: decodeURIComponent(m[1]), slides };
}

/**
 * The case route for a case and the slides to show.
 * @param {number | string} caseId
 * @param {number[]} slides
 */
export function casePath(caseId, slides = []) {
  const base = `#/pathology/case/${encodeURIComponent(String(caseId))}`;
  return slides.length ? `${base}?slides=${slides.slice(0, 2).join(',')}` : base;
}

/**
 * A slide's name in the tray: "A1 · H&E" (part+block, stain), or its label, or its id.
 * @param {{ id?: unknown, part?: unknown, block?: unknown, stain?: unknown, label?: unknown }} slide
 */
export function slideName(slide) {
  const where = `${slide.part ?? ''}${slide.block ?? ''}`.trim();
  const parts = [where, String(slide.stain ?? '').trim()].filter(Boolean);
  if (parts.length) return parts.join(' · ');
  return String(slide.label ?? '') || `slide ${slide.id ?? ''}`;
}

/**
 * What a consult row offers the signed-in user: the consultant answers an open one, the
 * requester grades an answered one (once).
 * @param {{ consultant_id?: unknown, requested_by?: unknown, state?: unknown, concordance?: unknown }} consult
 * @param {number | null | undefined} userId
 * @returns {'answer' | 'grade' | null}
 */
export function consultAction(consult, userId) {
  if (userId === null || userId === undefined) return null;
  if (consult.state === 'requested' && consult.consultant_id === userId) return 'answer';
  if (consult.state === 'answered' && consult.requested_by === userId && !consult.concordance) return 'grade';
  return null;
}

/**
 * A duration statistic of the dashboard, "p50 12m 03s · p90 …", or "—" with no data.
 * @param {{ n?: number, p50_s?: number | null, p90_s?: number | null } | null | undefined} stat
 * @param {(s: number) => string} fmt
 */
export function statText(stat, fmt) {
  if (!stat || !stat.n) return '—';
  const p = (/** @type {number | null | undefined} */ v) => (typeof v === 'number' ? fmt(v) : '—');
  return `p50 ${p(stat.p50_s)} · p90 ${p(stat.p90_s)} (n=${stat.n})`;
}
