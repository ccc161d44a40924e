// @ts-check
// The banner that pages a pathologist for a frozen section (GET /api/pathology/pages):
// shown over every page while a page is open, with a link to the case. The surgeon is
// waiting: this is the in-app half of paging (the other is the webhook).
import { api } from '../api.js';
import { formatDateTime, h } from '../dom.js';
import { mountPollingBanner } from './alert_banner.js';
import { casePath } from './pathology_format.js';

/**
 * Mount the banner in `host` (kept hidden while nothing is paged); returns a cleanup.
 * @param {HTMLElement} host
 * @returns {() => void}
 */
export function mountPagesBanner(host) {
  return mountPollingBanner(host, {
    testid: 'pathology-pages',
    what: 'pathology pages',
    load: async () => {
      const data = await api('GET', '/api/pathology/pages');
      return Array.isArray(data?.pages) ? data.pages : [];
    },
    /** @param {{ case_id: number, accession_number?: string, reason?: string, at?: string }[]} pages */
    render: (pages) => [h('strong', {}, 'Frozen section: you are paged '),
      pages.map((p) => h('a', { href: casePath(p.case_id), class: 'page-link', testid: 'pathology-page-link', dataset: { caseId: String(p.case_id) } },
        `${p.accession_number ?? `case ${p.case_id}`}${p.reason ? ` (${p.reason})` : ''} ${formatDateTime(p.at)}`))],
  });
}
