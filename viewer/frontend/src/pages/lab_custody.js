// @ts-check
// The chain of custody across institutions: a specimen's timeline (#/lab/specimen/<acc>)
// from its order at the county site to its disposal — who scanned it, where, when, at
// what temperature — with its stability hold if any, and a shipment box
// (#/lab/box/<code>): its scans, its temperature log and the specimens it carried.
import { ApiError, api } from '../api.js';
import { formatDateTime, h, replace } from '../dom.js';
import { labTabs } from './lab.js';
import { timelineRows } from './lab_format.js';

/**
 * @param {unknown} events
 * @param {string} testid
 */
function eventsTable(events, testid) {
  const rows = timelineRows(events);
  return h('table', { class: 'worklist', testid },
    h('thead', {}, h('tr', {}, ['Step', 'When', 'Who', 'Where', '°C', 'Detail'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.length ? rows.map((e) => h('tr', { testid: 'lab-custody-event', dataset: { step: String(e.step ?? '') } },
      h('td', {}, String(e.step ?? '')), h('td', { class: 'small' }, formatDateTime(e.at)),
      h('td', {}, String(e.actor ?? '')), h('td', {}, String(e.location ?? '')),
      h('td', { class: 'num' }, e.temperature_c === null || e.temperature_c === undefined ? '' : String(e.temperature_c)),
      h('td', { class: 'small' }, e.detail && Object.keys(e.detail).length ? JSON.stringify(e.detail) : '')))
      : h('tr', {}, h('td', { colspan: '6', class: 'empty' }, 'No event yet.'))));
}

/**
 * @param {HTMLElement} root
 * @param {{ accession?: string, boxCode?: string }} what
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLabCustody(root, what, { navigate, user }) {
  let disposed = false;
  const error = h('p', { class: 'error', role: 'alert', testid: 'lab-custody-error', hidden: true });
  const body = h('section', { class: 'worklist-page', testid: 'lab-custody' }, 'Loading…');
  root.append(labTabs('custody', user, navigate), error, body);
  const url = what.accession
    ? `/api/lab/specimens/${encodeURIComponent(what.accession)}/timeline`
    : `/api/lab/boxes/${encodeURIComponent(what.boxCode ?? '')}`;
  api('GET', url).then((d) => {
    if (disposed) return;
    if (what.accession) {
      replace(body, h('h2', {}, `Specimen ${d.accession} · ${d.site_id}`),
        h('p', {}, 'State: ', h('strong', { testid: 'lab-specimen-state' }, String(d.state ?? '')), ' · ',
          h('a', { href: `/api/lab/specimens/${encodeURIComponent(d.accession)}/label.pdf`, target: '_blank', rel: 'noopener', testid: 'lab-label-link' }, 'Label (PDF)')),
        d.hold_reason ? h('p', { class: 'error', testid: 'lab-specimen-hold' }, `Held: ${d.hold_reason}`) : null,
        eventsTable(d.events, 'lab-specimen-timeline'));
      return;
    }
    const log = Array.isArray(d.temperature_log) ? d.temperature_log : [];
    const specimens = Array.isArray(d.specimens) ? d.specimens : [];
    replace(body, h('h2', {}, `Box ${d.box_code} · ${d.site_id}`),
      h('p', {}, `State: ${d.state ?? ''} · condition: ${d.condition ?? ''}`),
      d.excursion ? h('p', { class: 'error', testid: 'lab-box-excursion' }, `Temperature excursion: ${d.excursion}`) : null,
      eventsTable(d.events, 'lab-box-timeline'),
      h('h3', {}, 'Temperature log'),
      log.length ? h('ul', { testid: 'lab-box-log' }, log.map((/** @type {any} */ p) => h('li', {}, `${formatDateTime(Array.isArray(p) ? p[0] : p?.at)}: ${Array.isArray(p) ? p[1] : p?.temperature_c} °C`)))
        : h('p', { class: 'muted' }, 'No reading.'),
      h('h3', {}, 'Specimens'),
      h('ul', { testid: 'lab-box-specimens' }, specimens.map((/** @type {any} */ s) => {
        const acc = String(s?.accession ?? s ?? '');
        return h('li', {}, h('a', { href: `#/lab/specimen/${encodeURIComponent(acc)}` }, acc), s?.hold_reason ? ` — held: ${s.hold_reason}` : '');
      })));
  }).catch((err) => {
    if (disposed) return;
    replace(body);
    replace(error, err instanceof ApiError ? err.message : String(err));
    error.hidden = false;
  });
  return () => { disposed = true; };
}
