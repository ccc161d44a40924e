// @ts-check
// The pathology dashboard (#/pathology/dashboard): the frozen-section steps' times per
// site (received → QC → first view → intra-op call → signed, p50 and p90) and the
// second-opinion concordance by pair of pathologists and by organ.
import { ApiError, api } from '../api.js';
import { formatDuration, h, replace } from '../dom.js';
import { pathologyTabs } from './pathology.js';
import { FROZEN_INTERVALS, statText } from './pathology_format.js';

/** @type {Record<string, string>} */
const INTERVAL_LABELS = {
  received_to_qc: 'Received → QC', qc_to_first_tile: 'QC → first view', first_tile_to_call: 'First view → call',
  call_to_signed: 'Call → signed', received_to_signed: 'Received → signed',
};

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderPathologyDashboard(root, ctx) {
  const error = h('p', { class: 'error', role: 'alert', testid: 'path-dashboard-error', hidden: true });
  const frozen = h('div', { class: 'table-wrap', testid: 'path-dashboard-frozen' }, 'Loading…');
  const concordance = h('div', { class: 'table-wrap', testid: 'path-dashboard-concordance' });
  root.append(pathologyTabs('dashboard', ctx.user), h('section', { class: 'dashboard-page' },
    h('h2', {}, 'Pathology dashboard'), error,
    h('h3', {}, 'Frozen sections: time per step'), frozen,
    h('h3', {}, 'Second opinions: concordance'), concordance));

  const fmt = (/** @type {number} */ s) => formatDuration(s);
  /** @param {Record<string, any>[]} rows @param {string} key @param {string} title */
  const table = (rows, key, title) => h('table', { class: 'worklist' },
    h('thead', {}, h('tr', {}, [title, 'Concordant', 'Minor', 'Major', 'n'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', {},
      h('td', {}, key === 'pair' ? `${r.requester ?? ''} → ${r.consultant ?? ''}` : r.organ || '—'),
      h('td', { class: 'num' }, r.concordant ?? 0), h('td', { class: 'num' }, r.minor ?? 0),
      h('td', { class: 'num' }, r.major ?? 0), h('td', { class: 'num' }, r.n ?? 0)))
      : h('tr', {}, h('td', { colspan: '5', class: 'empty' }, 'No graded second opinion yet.'))));

  let disposed = false;
  api('GET', '/api/pathology/dashboard').then((data) => {
    if (disposed) return;
    /** @type {Record<string, Record<string, any>>} */
    const bySite = data?.frozen ?? {};
    const sites = Object.keys(bySite).sort();
    replace(frozen, sites.length ? h('table', { class: 'worklist' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Site'), FROZEN_INTERVALS.map((k) => h('th', { scope: 'col' }, INTERVAL_LABELS[k])))),
      h('tbody', {}, sites.map((site) => h('tr', { testid: 'path-dashboard-site', dataset: { site } },
        h('td', {}, site), FROZEN_INTERVALS.map((k) => h('td', { class: 'small' }, statText(bySite[site]?.[k], fmt)))))))
      : h('p', { class: 'muted' }, 'No frozen section yet.'));
    const c = data?.concordance ?? {};
    replace(concordance, table(Array.isArray(c.pairs) ? c.pairs : [], 'pair', 'Requester → consultant'),
      table(Array.isArray(c.organs) ? c.organs : [], 'organ', 'Organ'));
  }).catch((err) => {
    replace(error, err instanceof ApiError ? err.message : String(err));
    error.hidden = false;
  });
  return () => { disposed = true; };
}
