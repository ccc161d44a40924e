// @ts-check
// The study page's texts that depend only on data: the header's "due in", an AI finding's
// figures, a prior's title and match. Pure, so Vitest checks them (frontend/tests/study_format.test.js).
import { formatDate } from '../../dom.js';

/** @typedef {import('./state.js').Study} Study */
/** @typedef {import('./state.js').Finding} Finding */
/** @typedef {import('./state.js').Prior} Prior */

/**
 * Time left at minute precision ("2h 05m", "12m", "< 1m"): it changes every half minute.
 * @param {number} seconds  its sign is ignored
 */
export function formatDue(seconds) {
  const m = Math.floor(Math.abs(seconds) / 60);
  if (m >= 24 * 60) return `${Math.floor(m / 1440)}d ${String(Math.floor((m % 1440) / 60)).padStart(2, '0')}h`;
  if (m >= 60) return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
  return m ? `${m}m` : '< 1m';
}

/**
 * When the study's report is due (ms since the epoch), NaN when nothing is due: a signed
 * study is read; otherwise the server's `seconds_left` counted from `now`, else `due_at`.
 * @param {Study} study
 * @param {number} now  ms since the epoch
 */
export function dueTime(study, now) {
  if (study.status === 'signed') return NaN;
  if (typeof study.seconds_left === 'number') return now + study.seconds_left * 1000;
  return study.due_at ? Date.parse(study.due_at) : NaN;
}

/**
 * The header's due text at `now` for a due time `dueMs`, or null when nothing is due.
 * @param {number} dueMs
 * @param {number} now
 * @returns {{ text: string, overdue: boolean, secondsLeft: number } | null}
 */
export function dueText(dueMs, now) {
  if (Number.isNaN(dueMs)) return null;
  const left = Math.round((dueMs - now) / 1000);
  return left < 0
    ? { text: `overdue ${formatDue(-left)}`, overdue: true, secondsLeft: left }
    : { text: `due in ${formatDue(left)}`, overdue: false, secondsLeft: left };
}

/**
 * The CSS class of a review state's badge ("review-accepted"...; letters only).
 * @param {string | null | undefined} review
 */
export function reviewClass(review) {
  return `badge review-${String(review ?? 'pending').replace(/[^a-z]/g, '')}`;
}

/**
 * A finding's figures: "p = 87.0% (threshold 50%) · 12.3 mL", each part when known.
 * @param {Finding} f
 */
export function findingFigures(f) {
  return [
    typeof f.probability === 'number' ? `p = ${(f.probability * 100).toFixed(1)}%` : '',
    typeof f.threshold === 'number' ? ` (threshold ${(f.threshold * 100).toFixed(0)}%)` : '',
    typeof f.volume_ml === 'number' ? ` · ${f.volume_ml.toFixed(1)} mL` : '',
  ].join('');
}

/**
 * A prior matched by name and birth date only (no shared patient ID): it may be someone else.
 * @param {Prior} p
 */
export function isWeakMatch(p) {
  return p.match === 'name+birthdate';
}

/**
 * How a prior was matched, in words.
 * @param {Prior} p
 */
export function matchText(p) {
  return `matched by ${p.match === 'id' ? 'patient ID' : p.match}`;
}

/**
 * The title of a prior shown side by side: site, date, description. `other` is the prior
 * study as its own API answer gives it, once loaded (its site name comes from there).
 * @param {Prior} p
 * @param {{ site_name?: string | null, site_id?: string | null, description?: string | null } | null} [other]
 */
export function priorTitle(p, other = null) {
  const site = other
    ? other.site_name || p.site_id || other.site_id || ''
    : p.site_name || p.site_id || '';
  const description = other ? p.description || other.description || '' : p.description ?? '';
  return [site, formatDate(p.date), description].filter(Boolean).join(' · ');
}
