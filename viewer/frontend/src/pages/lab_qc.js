// @ts-check
// Levey-Jennings charts (#/lab/qc): one analyzer, test and control level; the control
// values of successive runs as z-scores against the lot's mean and SD, the ±1/2/3 SD
// lines, each point coloured by its Westgard status with the rules it broke as its
// title, and the table of the rejected runs. Drawn as SVG from the chart's JSON; the
// same chart as the server's PNG (lab.lj_chart) is a link away.
import { ApiError, api } from '../api.js';
import { formatDateTime, h, replace } from '../dom.js';
import { labTabs } from './lab.js';
import { ljGeometry } from './lab_format.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 900;
const HEIGHT = 320;
/** The catalog's analyzers and what they run (lab/catalog.toml). */
const ANALYZERS = /** @type {Record<string, string[]>} */ ({
  CHEM1: ['K', 'NA', 'CL', 'HCO3', 'CREA', 'GLU', 'TNI'],
  HEME1: ['HGB', 'WBC', 'PLT', 'MCV', 'INR'],
});

/**
 * @param {string} tag
 * @param {Record<string, string | number>} attrs
 * @param {string} [title]
 */
function svg(tag, attrs, title) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (title) {
    const t = document.createElementNS(SVG, 'title');
    t.textContent = title;
    el.append(t);
  }
  return el;
}

/**
 * The chart's points, whatever the service calls them: [{z, status, rules, ...}].
 * @param {Record<string, any>} data
 * @returns {Record<string, any>[]}
 */
function pointsOf(data) {
  const rows = data?.points ?? data?.values ?? [];
  return Array.isArray(rows) ? rows.filter((p) => p && Number.isFinite(Number(p.z))) : [];
}

/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLabQc(root, { navigate, user }) {
  let disposed = false;
  const saved = new URLSearchParams(sessionStorage.getItem('rdc.lab.qc') ?? 'analyzer=CHEM1&test=K&level=1');
  const analyzer = h('select', { testid: 'lab-qc-analyzer', 'aria-label': 'Analyzer' },
    Object.keys(ANALYZERS).map((a) => h('option', { value: a, selected: a === saved.get('analyzer') }, a)));
  const test = h('select', { testid: 'lab-qc-test', 'aria-label': 'Test' });
  const level = h('select', { testid: 'lab-qc-level', 'aria-label': 'Level' },
    [1, 2, 3].map((l) => h('option', { value: String(l), selected: String(l) === saved.get('level') }, `Level ${l}`)));
  const error = h('p', { class: 'error', role: 'alert', testid: 'lab-qc-error', hidden: true });
  const chart = h('div', { class: 'lj-chart', testid: 'lab-qc-chart' });
  const summary = h('p', { class: 'muted', testid: 'lab-qc-summary' });
  const png = h('a', { testid: 'lab-qc-png', target: '_blank', rel: 'noopener' }, 'PNG');
  const rejects = h('div', { class: 'table-wrap', testid: 'lab-qc-rejects' });

  function fillTests() {
    const tests = ANALYZERS[analyzer.value] ?? [];
    const want = saved.get('test');
    replace(test, tests.map((t) => h('option', { value: t, selected: t === want }, t)));
  }

  async function load() {
    const q = { analyzer: analyzer.value, test: test.value, level: level.value };
    sessionStorage.setItem('rdc.lab.qc', new URLSearchParams(q).toString());
    png.setAttribute('href', `/api/lab/qc/chart.png?${new URLSearchParams(q)}`);
    try {
      const data = await api('GET', '/api/lab/qc/chart', { query: q });
      if (disposed) return;
      error.hidden = true;
      const points = pointsOf(data);
      const g = ljGeometry(/** @type {any} */ (points), { width: WIDTH, height: HEIGHT });
      const el = svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: '100%', role: 'img', 'aria-label': `Levey-Jennings chart ${q.analyzer} ${q.test} level ${q.level}`, 'data-testid': 'lab-qc-svg' });
      for (const line of g.lines) {
        const colour = Math.abs(line.sd) === 3 ? '#d9534f' : Math.abs(line.sd) === 2 ? '#e0a030' : '#556';
        el.append(svg('line', { x1: 30, x2: WIDTH - 30, y1: line.y, y2: line.y, stroke: line.sd === 0 ? '#8ab' : colour, 'stroke-dasharray': line.sd === 0 ? '' : '4 4' }));
        el.append(svg('text', { x: 2, y: line.y + 4, fill: '#9ab', 'font-size': 11 }, line.sd === 0 ? 'mean' : `${line.sd > 0 ? '+' : ''}${line.sd}SD`));
      }
      if (g.dots.length > 1) {
        el.append(svg('polyline', { points: g.dots.map((d) => `${d.x},${d.y}`).join(' '), fill: 'none', stroke: '#8ab' }));
      }
      g.dots.forEach((d, i) => {
        const colour = d.status === 'reject' ? '#d9534f' : d.status === 'warning' ? '#e0a030' : '#5cb85c';
        const p = points[i];
        el.append(svg('circle', { cx: d.x, cy: d.y, r: 5, fill: colour, 'data-status': d.status, 'data-testid': 'lab-qc-point' },
          `${p.run_code ?? ''} ${formatDateTime(p.measured_at)}: ${p.value ?? ''} (z ${d.z.toFixed(2)})${d.rules.length ? ` — ${d.rules.join(', ')}` : ''}`));
      });
      replace(chart, el);
      const lot = data?.lot ? `lot ${data.lot}, ` : '';
      const target = data?.mean !== undefined ? `mean ${data.mean}, SD ${data.sd}; ` : '';
      replace(summary, points.length ? `${lot}${target}${points.length} run${points.length === 1 ? '' : 's'}` : 'No control result for this analyzer, test and level yet.');
      const bad = points.filter((p) => p.status === 'reject');
      replace(rejects, bad.length ? h('table', { class: 'worklist' },
        h('thead', {}, h('tr', {}, ['Run', 'Measured', 'Value', 'z', 'Westgard rules'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, bad.map((p) => h('tr', { testid: 'lab-qc-reject' },
          h('td', {}, String(p.run_code ?? p.run_id ?? '')), h('td', {}, formatDateTime(p.measured_at)),
          h('td', { class: 'num' }, String(p.value ?? '')), h('td', { class: 'num' }, Number(p.z).toFixed(2)),
          h('td', { testid: 'lab-qc-rules' }, (Array.isArray(p.rules) ? p.rules : []).join(', '))))))
        : '');
    } catch (err) {
      if (disposed) return;
      replace(chart);
      replace(error, err instanceof ApiError ? err.message : String(err));
      error.hidden = false;
    }
  }

  fillTests();
  analyzer.addEventListener('change', () => { fillTests(); load(); });
  test.addEventListener('change', load);
  level.addEventListener('change', load);
  root.append(labTabs('qc', user, navigate), h('section', { class: 'worklist-page' },
    h('div', { class: 'toolbar' }, h('h2', {}, 'Levey-Jennings'), analyzer, test, level, png),
    error, summary, chart, rejects));
  load();
  return () => { disposed = true; };
}
