// @ts-check
// The critical-value alert of a county account (GET /api/lab/critical?open_only=true):
// shown over every page while a critical value of its site waits for acknowledgement,
// with a link to the acknowledgement form. Someone must take the value: this is the
// in-app half of the closed loop (the others are the ORU to the site and the webhook).
import { api } from '../api.js';
import { h, replace } from '../dom.js';
import { valueText } from './lab_format.js';

const POLL_MS = 15_000;

/**
 * Mount the alert in `host` (kept hidden while nothing is open); returns a cleanup.
 * @param {HTMLElement} host
 * @returns {() => void}
 */
export function mountCriticalAlert(host) {
  const banner = h('div', { class: 'pages-banner', role: 'alert', testid: 'lab-critical-alert', hidden: true });
  host.append(banner);
  let stopped = false;

  async function poll() {
    try {
      const data = await api('GET', '/api/lab/critical', { query: { open_only: true } });
      if (stopped) return;
      /** @type {Record<string, any>[]} */
      const open = Array.isArray(data?.notices) ? data.notices : [];
      banner.hidden = !open.length;
      replace(banner, open.length ? [h('strong', {}, `Critical value${open.length === 1 ? '' : 's'} to acknowledge: `),
        open.map((n) => h('a', { href: '#/lab/critical', class: 'page-link', testid: 'lab-critical-alert-link', dataset: { noticeId: String(n.id) } },
          `${n.test_code ?? ''} ${valueText(n)} (${n.patient_id ?? ''})`))] : []);
    } catch (err) {
      console.warn('lab critical values: not loaded', err);
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
