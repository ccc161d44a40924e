// @ts-check
// The banner that pages a pathologist for a frozen section (GET /api/pathology/pages):
// shown over every page while a page is open, with a link to the case. The surgeon is
// waiting: this is the in-app half of paging (the other is the webhook).
import { api } from '../api.js';
import { formatDateTime, h, replace } from '../dom.js';
import { casePath } from './pathology_format.js';

const POLL_MS = 15_000;

/**
 * Mount the banner in `host` (kept hidden while nothing is paged); returns a cleanup.
 * @param {HTMLElement} host
 * @returns {() => void}
 */
export function mountPagesBanner(host) {
  const banner = h('div', { class: 'pages-banner', role: 'alert', testid: 'pathology-pages', hidden: true });
  host.append(banner);
  let stopped = false;

  async function poll() {
    try {
      const data = await api('GET', '/api/pathology/pages');
      if (stopped) return;
      /** @type {{ case_id: number, accession_number?: string, reason?: string, at?: string }[]} */
      const pages = Array.isArray(data?.pages) ? data.pages : [];
      banner.hidden = !pages.length;
      replace(banner, pages.length ? [h('strong', {}, 'Frozen section: you are paged '),
        pages.map((p) => h('a', { href: casePath(p.case_id), class: 'page-link', testid: 'pathology-page-link', dataset: { caseId: String(p.case_id) } },
          `${p.accession_number ?? `case ${p.case_id}`}${p.reason ? ` (${p.reason})` : ''} ${formatDateTime(p.at)}`))] : []);
    } catch (err) {
      console.warn('pathology pages: not loaded', err);
    }
  }
  poll();
  const timer = setInterval(() => { if (!document.hidden) poll(); }, POLL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
    banner.remove();
  };
}
