// @ts-check
// A banner over every page that polls one list and stays until it is empty: the in-app
// half of paging a pathologist (frozen sections) and of a county's critical lab values.
// Each caller says where the list comes from and how one entry reads; the polling, the
// hidden tab and the cleanup are the same for both.
import { h, replace } from '../dom.js';

const POLL_MS = 15_000;

/**
 * @typedef {object} BannerSpec
 * @property {string} testid the banner's data-testid
 * @property {string} what what is loaded, for the console when it fails
 * @property {() => Promise<unknown[]>} load the entries still open
 * @property {(entries: any[]) => (Node | string | (Node | string)[])[]} render the banner's content
 */

/**
 * Mount the banner in `host` (hidden while nothing is open); returns a cleanup.
 * @param {HTMLElement} host
 * @param {BannerSpec} spec
 * @returns {() => void}
 */
export function mountPollingBanner(host, spec) {
  const banner = h('div', { class: 'pages-banner', role: 'alert', testid: spec.testid, hidden: true });
  host.append(banner);
  let stopped = false;

  async function poll() {
    try {
      const entries = await spec.load();
      if (stopped) return;
      banner.hidden = !entries.length;
      replace(banner, entries.length ? spec.render(entries) : []);
    } catch (err) {
      console.warn(`${spec.what}: not loaded`, err);
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
