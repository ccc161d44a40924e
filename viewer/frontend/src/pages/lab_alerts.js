// @ts-check
// The critical-value alert of a county account (GET /api/lab/critical?open_only=true):
// shown over every page while a critical value of its site waits for acknowledgement,
// with a link to the acknowledgement form. Someone must take the value: this is the
// in-app half of the closed loop (the others are the ORU to the site and the webhook).
import { api } from '../api.js';
import { h } from '../dom.js';
import { mountPollingBanner } from './alert_banner.js';
import { valueText } from './lab_format.js';

/**
 * Mount the alert in `host` (kept hidden while nothing is open); returns a cleanup.
 * @param {HTMLElement} host
 * @returns {() => void}
 */
export function mountCriticalAlert(host) {
  return mountPollingBanner(host, {
    testid: 'lab-critical-alert',
    what: 'lab critical values',
    load: async () => {
      const data = await api('GET', '/api/lab/critical', { query: { open_only: true } });
      return Array.isArray(data?.notices) ? data.notices : [];
    },
    /** @param {Record<string, any>[]} open */
    render: (open) => [h('strong', {}, `Critical value${open.length === 1 ? '' : 's'} to acknowledge: `),
      open.map((n) => h('a', { href: '#/lab/critical', class: 'page-link', testid: 'lab-critical-alert-link', dataset: { noticeId: String(n.id) } },
        `${n.test_code ?? ''} ${valueText(n)} (${n.patient_id ?? ''})`))],
  });
}
