// @ts-check
// Cardiologists' ECG queue (#/ecg) and 12-lead reading screen (#/ecg/<id>).
// API: viewer/ecg_api.py (queue, one ECG with its tracing, edits) and the report API.
import { ApiError, api } from '../api.js';
import { formatDate, formatDuration, formatPersonName, h, humanize, replace } from '../dom.js';
import { renderReportPanel } from './report.js';
import {
  COL_S, GAINS, SPEEDS, STANDARD, basePxPerMm as fitPxPerMm, caliperReading, paperLayout, samplePointMm,
} from './ecg_geometry.js';

export { GAINS, SPEEDS };

const QUEUE_REFRESH_MS = 30_000;
const MEASUREMENTS = ['heart_rate_bpm', 'pr_ms', 'qrs_ms', 'qt_ms', 'qtc_bazett_ms',
  'qtc_fridericia_ms', 'p_axis_deg', 'qrs_axis_deg', 't_axis_deg'];
const POOR_QUALITY = ['poor', 'unusable'];

const message = (err) => (err instanceof ApiError ? err.message : String(err?.message ?? err));
const seg = (v) => encodeURIComponent(String(v));
const cls = (v) => String(v ?? '').toLowerCase().replace(/[^a-z0-9-]/g, '');

function fmtNumber(v, digits = 0) {
  return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '—';
}

function statementBadges(statements) {
  return (statements ?? []).map((s) => h('div', { class: s.critical ? 'ecg-st crit-text' : 'ecg-st' },
    s.critical ? h('span', { class: 'badge crit' }, 'CRITICAL') : null, s.text ?? s.code ?? ''));
}

// Queue ------------------------------------------------------------------------------
/**
 * @param {HTMLElement} root
 * @param {PageContext} ctx
 */
export function renderEcgQueue(root, { navigate }) {
  let loading = false;
  const status = h('select', { testid: 'ecg-filter-status' },
    h('option', { value: 'open' }, 'Open'), h('option', { value: 'all' }, 'All'));
  const error = h('p', { class: 'error', role: 'alert', testid: 'ecg-queue-error', hidden: true });
  const total = h('span', { class: 'muted', testid: 'ecg-queue-total' });
  const tbody = h('tbody');
  const table = h('table', { class: 'worklist', testid: 'ecg-queue' },
    h('thead', {}, h('tr', {},
      ['Severity', 'Patient', 'Site', 'Quality', 'HR', 'Statements', 'Waiting', 'Status', ''].map(
        (t) => h('th', { scope: 'col' }, t)))),
    tbody);

  const open = (item) => navigate(`#/ecg/${seg(item.id)}`);

  function row(item) {
    const poor = POOR_QUALITY.includes(item.quality);
    const tr = h('tr', {
      testid: 'ecg-row',
      class: item.critical ? 'critical' : null,
      dataset: { ecgId: String(item.id), studyId: String(item.study_id), status: String(item.status ?? '') },
    },
    h('td', {}, item.critical
      ? h('span', { class: 'badge crit', testid: 'ecg-critical' }, 'CRITICAL')
      : h('span', { class: 'badge' }, 'routine')),
    h('td', {}, h('div', { class: 'strong' }, formatPersonName(item.patient_name)),
      h('div', { class: 'muted small' }, item.patient_id ?? '')),
    h('td', {}, item.site_name || item.site_id || ''),
    h('td', {}, h('span', { class: `badge q-${cls(item.quality)}`, testid: 'ecg-quality' }, item.quality ?? '?'),
      poor ? h('div', { class: 'warning small' }, 'needs a human look') : null,
      h('div', { class: 'muted small' }, `conf. ${fmtNumber(item.confidence, 2)}`)),
    h('td', { class: 'num', testid: 'ecg-hr' }, fmtNumber(item.heart_rate_bpm)),
    h('td', { testid: 'ecg-statements' }, statementBadges(item.statements)),
    h('td', { class: 'countdown' }, formatDuration(item.waiting_s ?? 0)),
    h('td', {}, h('span', { class: `badge st-${cls(item.status)}`, testid: 'ecg-status' }, item.status ?? ''),
      item.edited_by ? h('div', { class: 'muted small' }, `edited by ${item.edited_by}`) : null),
    h('td', {}, h('button', {
      class: 'btn primary small', type: 'button', testid: 'ecg-open', onClick: () => open(item),
    }, 'Open')));
    tr.addEventListener('dblclick', () => open(item));
    return tr;
  }

  async function load() {
    if (loading) return;
    loading = true;
    try {
      const data = await api('GET', '/api/ecg/queue', { query: { status: status.value, page_size: 200 } });
      error.hidden = true;
      const items = data?.items ?? [];
      tbody.replaceChildren(...items.map(row));
      if (!items.length) {
        tbody.append(h('tr', {}, h('td', { colspan: '9', class: 'empty', testid: 'ecg-queue-empty' },
          'No ECGs to read.')));
      }
      replace(total, `${data?.total ?? 0} ECGs`);
    } catch (err) {
      replace(error, message(err));
      error.hidden = false;
    } finally {
      loading = false;
    }
  }
  status.addEventListener('change', load);

  root.append(h('section', { class: 'worklist-page' },
    h('div', { class: 'toolbar' },
      h('h2', {}, 'ECG queue'),
      h('label', {}, 'Show ', status),
      h('button', { class: 'btn', type: 'button', testid: 'ecg-refresh', onClick: () => load() }, 'Refresh'),
      h('span', { class: 'spacer' }), total),
    error,
    h('div', { class: 'table-wrap' }, table)));
  const timer = setInterval(() => { if (!document.hidden) load(); }, QUEUE_REFRESH_MS);
  load();
  return () => clearInterval(timer);
}

// 12-lead paper ----------------------------------------------------------------------
const COLUMNS = [['I', 'II', 'III'], ['aVR', 'aVL', 'aVF'], ['V1', 'V2', 'V3'], ['V4', 'V5', 'V6']];
const RHYTHM_LEAD = 'II';
const ZOOMS = [0.75, 1, 1.5, 2, 3, 4];

/* The paper's layout, scale and caliper arithmetic: ecg_geometry.js. */

/** Measurement names as a reader writes them (the API's keys are machine names). */
const MEASUREMENT_LABELS = {
  heart_rate_bpm: 'Heart rate (bpm)', rr_ms: 'RR (ms)', pr_ms: 'PR (ms)', qrs_ms: 'QRS (ms)',
  qt_ms: 'QT (ms)', qtc_bazett_ms: 'QTc Bazett (ms)', qtc_fridericia_ms: 'QTc Fridericia (ms)',
  p_axis_deg: 'P axis (°)', qrs_axis_deg: 'QRS axis (°)', t_axis_deg: 'T axis (°)',
  p_ms: 'P duration (ms)', st_j_mv: 'ST at J (mV)', st_j60_mv: 'ST at J+60 ms (mV)',
};
const ACRONYMS = new Set(['rr', 'pr', 'qrs', 'qt', 'qtc', 'st', 'hr', 'ecg', 'lvh', 'av', 'j', 'p', 't']);
const UNITS = { ms: 'ms', bpm: 'bpm', deg: '°', mv: 'mV', uv: 'µV', s: 's', hz: 'Hz', mm: 'mm', pct: '%' };

/** "qtc_bazett_ms" → "QTc Bazett (ms)"; unknown names get acronyms and units the same way. */
export function measurementLabel(name) {
  if (MEASUREMENT_LABELS[name]) return MEASUREMENT_LABELS[name];
  const words = String(name).split(/[_\s]+/).filter(Boolean);
  const unit = words.length > 1 && UNITS[words[words.length - 1].toLowerCase()];
  if (unit) words.pop();
  const text = words.map((w, i) => {
    const lower = w.toLowerCase();
    if (lower === 'qtc') return 'QTc';
    if (ACRONYMS.has(lower)) return lower.toUpperCase();
    return i === 0 ? lower.charAt(0).toUpperCase() + lower.slice(1) : lower;
  }).join(' ');
  return unit ? `${text} (${unit})` : text;
}

/** "66y F" / "F" / "66y": what the header says about the patient, from the API's fields. */
function ageSexText(item) {
  const sex = { M: 'male', F: 'female', O: 'other' }[String(item?.patient_sex ?? '').toUpperCase()];
  return [item?.patient_age, sex].filter(Boolean).join(' · ');
}

/** A canvas drawing of the 12-lead ECG; returns {element, draw, setTracing, ...}. */
function ecgPaper() {
  const canvas = h('canvas', { testid: 'ecg-canvas', class: 'ecg-canvas' });
  const wrap = h('div', { class: 'ecg-paper-wrap', testid: 'ecg-paper' }, canvas);
  const readout = h('span', { class: 'ecg-caliper-readout', testid: 'ecg-caliper-readout' });
  const zoomLabel = h('span', { class: 'muted small', testid: 'ecg-zoom-level' });
  const caliperBtn = h('button', { class: 'btn small', type: 'button', testid: 'ecg-calipers', 'aria-pressed': 'false' }, 'Calipers');
  const zoomIn = h('button', { class: 'btn small', type: 'button', testid: 'ecg-zoom-in', title: 'Zoom in' }, '+');
  const zoomOut = h('button', { class: 'btn small', type: 'button', testid: 'ecg-zoom-out', title: 'Zoom out' }, '−');
  const speedSelect = h('select', { testid: 'ecg-speed', 'aria-label': 'Paper speed' },
    SPEEDS.map((v) => h('option', { value: String(v), selected: v === 25 }, `${v} mm/s`)));
  const gainSelect = h('select', { testid: 'ecg-gain', 'aria-label': 'Gain' },
    GAINS.map((v) => h('option', { value: String(v), selected: v === 10 }, `${v} mm/mV`)));
  const toolbar = h('div', { class: 'viewer-toolbar ecg-toolbar' },
    h('span', { class: 'group' }, zoomOut, zoomIn), zoomLabel,
    h('label', { class: 'group small', title: 'Paper speed' }, speedSelect),
    h('label', { class: 'group small', title: 'Gain' }, gainSelect),
    h('span', { class: 'group' }, caliperBtn), readout);

  let tracing = null;
  let zoomIndex = ZOOMS.indexOf(1);
  let pxPerMm = 4;
  let calipers = false;
  let points = []; // [{x, y}] in mm
  let paper = STANDARD;

  function basePxPerMm() {
    // Millimetres stay millimetres: the standard 25 mm/s paper fits the width, so at
    // 50 mm/s the paper is twice as wide (it scrolls) and a millimetre is as large.
    return fitPxPerMm(wrap.clientWidth);
  }

  function drawGrid(ctx) {
    ctx.fillStyle = '#fff8f6';
    ctx.fillRect(0, 0, paper.widthMm * pxPerMm, paper.heightMm * pxPerMm);
    /** @type {Array<[number, string, number]>} */
    const lines = [[1, '#f7d4d0', 0.5], [5, '#e79c94', 1]];
    for (const [step, color, width] of lines) {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let x = 0; x <= paper.widthMm + 1e-6; x += step) {
        const px = Math.round(x * pxPerMm) + 0.5;
        ctx.moveTo(px, 0);
        ctx.lineTo(px, paper.heightMm * pxPerMm);
      }
      for (let y = 0; y <= paper.heightMm + 1e-6; y += step) {
        const py = Math.round(y * pxPerMm) + 0.5;
        ctx.moveTo(0, py);
        ctx.lineTo(paper.widthMm * pxPerMm, py);
      }
      ctx.stroke();
    }
  }

  function trace(ctx, values, fs, i0, i1, x0Mm, yMm) {
    ctx.beginPath();
    let pen = false;
    for (let i = i0; i < Math.min(i1, values.length); i += 1) {
      const v = values[i];
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        pen = false;
        continue;
      }
      const at = samplePointMm(paper, i, i0, fs, v, x0Mm, yMm);
      const x = at.x * pxPerMm;
      const y = at.y * pxPerMm;
      if (pen) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke();
  }

  function draw() {
    pxPerMm = basePxPerMm() * ZOOMS[zoomIndex];
    const dpr = window.devicePixelRatio || 1;
    const w = Math.ceil(paper.widthMm * pxPerMm);
    const hgt = Math.ceil(paper.heightMm * pxPerMm);
    canvas.width = Math.ceil(w * dpr);
    canvas.height = Math.ceil(hgt * dpr);
    canvas.style.width = `${w}px`;
    canvas.style.height = `${hgt}px`;
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawGrid(ctx);
    ctx.strokeStyle = '#111';
    ctx.fillStyle = '#111';
    ctx.lineWidth = Math.max(1, pxPerMm * 0.25);
    ctx.lineJoin = 'round';
    ctx.font = `${Math.max(10, 3.2 * pxPerMm)}px system-ui, sans-serif`;
    const { baselineMm, leftMm, colMm, rowMm } = paper;
    const pulseEnd = 3 + 0.2 * paper.speed;
    for (let row = 0; row < 4; row += 1) {
      // Calibration pulse: 1 mV (gain mm high) for 0.2 s (5 mm at 25 mm/s).
      const b = baselineMm(row) * pxPerMm;
      const top = (baselineMm(row) - paper.gain) * pxPerMm;
      ctx.beginPath();
      ctx.moveTo(1 * pxPerMm, b);
      ctx.lineTo(3 * pxPerMm, b);
      ctx.lineTo(3 * pxPerMm, top);
      ctx.lineTo(pulseEnd * pxPerMm, top);
      ctx.lineTo(pulseEnd * pxPerMm, b);
      ctx.lineTo(leftMm * pxPerMm, b);
      ctx.stroke();
    }
    const leads = tracing?.leads ?? {};
    const fs = Number(tracing?.sampling_rate) || 250;
    COLUMNS.forEach((names, col) => {
      names.forEach((name, row) => {
        const x0 = leftMm + col * colMm;
        const y = baselineMm(row);
        ctx.fillText(name, (x0 + 1.5) * pxPerMm, (y - rowMm * 0.45) * pxPerMm);
        if (col > 0) { // lead change marker
          ctx.beginPath();
          ctx.moveTo(x0 * pxPerMm, (y - 3) * pxPerMm);
          ctx.lineTo(x0 * pxPerMm, (y + 3) * pxPerMm);
          ctx.stroke();
        }
        const values = leads[name];
        if (Array.isArray(values)) {
          const i0 = Math.round(col * COL_S * fs);
          trace(ctx, values, fs, i0, Math.round((col + 1) * COL_S * fs), x0, y);
        }
      });
    });
    const rhythm = leads[RHYTHM_LEAD];
    const yR = baselineMm(3);
    ctx.fillText(`${RHYTHM_LEAD} (rhythm)`, (leftMm + 1.5) * pxPerMm, (yR - rowMm * 0.45) * pxPerMm);
    if (Array.isArray(rhythm)) trace(ctx, rhythm, fs, 0, Math.round(4 * COL_S * fs), leftMm, yR);
    drawCalipers(ctx);
    canvas.dataset.rendered = tracing ? 'true' : 'false';
    canvas.dataset.pxPerMm = pxPerMm.toFixed(3);
    canvas.dataset.speed = String(paper.speed);
    canvas.dataset.gain = String(paper.gain);
    replace(zoomLabel, `${Math.round(ZOOMS[zoomIndex] * 100)}% · ${pxPerMm.toFixed(1)} px/mm`);
    zoomIn.disabled = zoomIndex >= ZOOMS.length - 1;
    zoomOut.disabled = zoomIndex <= 0;
  }

  function drawCalipers(ctx) {
    if (!points.length) return;
    ctx.save();
    ctx.strokeStyle = '#1565c0';
    ctx.fillStyle = '#1565c0';
    ctx.lineWidth = 1.5;
    ctx.setLineDash([4, 3]);
    for (const p of points) {
      ctx.beginPath();
      ctx.moveTo(p.x * pxPerMm, 0);
      ctx.lineTo(p.x * pxPerMm, paper.heightMm * pxPerMm);
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(p.x * pxPerMm, p.y * pxPerMm, 3, 0, Math.PI * 2);
      ctx.fill();
    }
    if (points.length === 2) {
      ctx.setLineDash([]);
      ctx.beginPath();
      ctx.moveTo(points[0].x * pxPerMm, points[0].y * pxPerMm);
      ctx.lineTo(points[1].x * pxPerMm, points[1].y * pxPerMm);
      ctx.stroke();
    }
    ctx.restore();
  }

  function showReadout() {
    if (points.length < 2) {
      replace(readout, calipers ? (points.length ? 'Click the second point' : 'Click the first point') : '');
      delete readout.dataset.dtMs;
      return;
    }
    const { dtMs, dmv, ratePerMin } = caliperReading(paper, points[0], points[1]);
    readout.dataset.dtMs = dtMs.toFixed(0);
    readout.dataset.dmv = dmv.toFixed(2);
    replace(readout,
      h('span', { testid: 'ecg-caliper-dt' }, `Δt ${dtMs.toFixed(0)} ms`), ' · ',
      h('span', { testid: 'ecg-caliper-rate' }, ratePerMin !== null ? `${ratePerMin.toFixed(0)} /min` : '—'), ' · ',
      h('span', { testid: 'ecg-caliper-dmv' }, `ΔmV ${dmv.toFixed(2)}`));
  }

  canvas.addEventListener('click', (event) => {
    if (!calipers) return;
    const rect = canvas.getBoundingClientRect();
    const p = { x: (event.clientX - rect.left) / pxPerMm, y: (event.clientY - rect.top) / pxPerMm };
    points = points.length >= 2 ? [p] : [...points, p];
    draw();
    showReadout();
  });
  caliperBtn.addEventListener('click', () => {
    calipers = !calipers;
    points = [];
    caliperBtn.classList.toggle('active', calipers);
    caliperBtn.setAttribute('aria-pressed', String(calipers));
    canvas.classList.toggle('calipers', calipers);
    draw();
    showReadout();
  });
  function setPaper() {
    paper = paperLayout(Number(speedSelect.value) || 25, Number(gainSelect.value) || 10);
    points = []; // calipers measure on the paper they were placed on
    draw();
    showReadout();
  }
  speedSelect.addEventListener('change', setPaper);
  gainSelect.addEventListener('change', setPaper);
  zoomIn.addEventListener('click', () => { zoomIndex = Math.min(ZOOMS.length - 1, zoomIndex + 1); draw(); });
  zoomOut.addEventListener('click', () => { zoomIndex = Math.max(0, zoomIndex - 1); draw(); });

  let lastWidth = 0;
  const observer = new ResizeObserver(() => {
    if (Math.abs(wrap.clientWidth - lastWidth) > 2) {
      lastWidth = wrap.clientWidth;
      draw();
    }
  });
  observer.observe(wrap);

  function nonBlankPixels() {
    if (canvas.dataset.rendered !== 'true') return 0;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i] < 90 && data[i + 1] < 90 && data[i + 2] < 90 && data[i + 3] > 0) n += 1;
    }
    return n;
  }

  return {
    element: h('div', { class: 'ecg-paper-pane' }, toolbar, wrap),
    setTracing(t) { tracing = t; draw(); },
    nonBlankPixels,
    dispose() { observer.disconnect(); },
  };
}

// Reading screen ---------------------------------------------------------------------
/**
 * Per-lead signal problems of an analysis (``result.quality.leads``), one line per lead
 * that has any: a flat or noisy lead is shown by name, never folded into one grade.
 */
function qualityProblems(result) {
  const leads = result?.quality?.leads ?? {};
  const rows = Object.entries(leads)
    .filter(([, q]) => Array.isArray(q?.problems) && q.problems.length)
    .map(([lead, q]) => h('li', { testid: 'ecg-lead-problem', dataset: { lead } },
      h('strong', {}, lead), `: ${q.problems.join('; ')}`));
  const record = (result?.quality?.problems ?? []).map((p) => h('li', { testid: 'ecg-record-problem' }, p));
  if (!rows.length && !record.length) return [];
  return [h('ul', { class: 'ecg-lead-problems small', testid: 'ecg-lead-problems' }, ...record, ...rows)];
}

/**
 * @param {HTMLElement} root
 * @param {string} ecgId
 * @param {PageContext} _ctx
 */
export function renderEcg(root, ecgId, _ctx) {
  const cleanups = [];
  let ecg = null;
  let statements = [];
  let disposed = false;

  const paper = ecgPaper();
  cleanups.push(() => paper.dispose());
  if (__RDC_TEST_HOOKS__) {
    const hook = window.__rdc;
    if (hook) {
      hook.ecgNonBlankPixels = () => paper.nonBlankPixels();
      cleanups.push(() => { hook.ecgNonBlankPixels = () => 0; });
    }
  }

  const title = h('div', { class: 'ecg-title', testid: 'ecg-title' }, 'Loading ECG…');
  const qualityBox = h('div', { class: 'ecg-quality', testid: 'ecg-quality-box' });
  const error = h('p', { class: 'error', role: 'alert', testid: 'ecg-error', hidden: true });
  const tracingError = h('p', { class: 'error', role: 'alert', testid: 'ecg-tracing-error', hidden: true });
  const measurementsBox = h('div', { class: 'ecg-measurements', testid: 'ecg-measurements' });
  const statementList = h('ul', { class: 'ecg-statements', testid: 'ecg-statement-list' });
  const addCode = h('input', { testid: 'ecg-statement-add-code', placeholder: 'code', size: '12' });
  const addText = h('input', { testid: 'ecg-statement-add-text', placeholder: 'Statement text' });
  const addCritical = h('input', { type: 'checkbox', testid: 'ecg-statement-add-critical' });
  const addBtn = h('button', { class: 'btn small', type: 'button', testid: 'ecg-statement-add' }, 'Add');
  const saveBtn = h('button', { class: 'btn primary', type: 'button', testid: 'ecg-save' }, 'Save ECG');
  const saveStatus = h('span', { class: 'muted small', testid: 'ecg-save-status', 'aria-live': 'polite' });
  const aiBox = h('div', { class: 'ecg-ai', testid: 'ecg-ai-findings' });
  const lockNotice = h('p', { class: 'warning small', role: 'status', testid: 'ecg-locked', hidden: true });
  const previousBox = h('div', { class: 'panel ecg-previous', testid: 'ecg-previous' });
  const reportBox = h('div', { class: 'panel report-panel', testid: 'report-panel' });
  const measurementInputs = new Map();

  root.append(h('section', { class: 'ecg-page' },
    h('div', { class: 'study-header ecg-header' },
      h('a', { href: '#/ecg', class: 'btn small', testid: 'ecg-back' }, '‹ Queue'), title, qualityBox),
    error,
    // The tracing and the previous ECG on the left; on the right, first what the
    // cardiologist edits (statements, then measurements), then the report: at 1366×768
    // the statements are on screen without scrolling the page.
    h('div', { class: 'ecg-layout' },
      h('div', { class: 'ecg-main' }, tracingError, paper.element, previousBox),
      h('aside', { class: 'side-pane ecg-side' },
        h('div', { class: 'panel ecg-current', testid: 'ecg-editor' },
          h('h3', {}, 'Statements'), statementList,
          h('div', { class: 'ecg-add' }, addCode, addText,
            h('label', { class: 'check' }, addCritical, ' critical'), addBtn),
          h('div', { class: 'report-actions' }, saveBtn, saveStatus),
          lockNotice,
          h('h3', {}, 'Measurements'), measurementsBox,
          aiBox),
        reportBox))));

  function showError(text) {
    replace(error, text);
    error.hidden = !text;
  }

  // Once the report is signed, what it was signed on (measurements, statements, the AI
  // model's findings) is read-only; an addendum reopens it (the server answers 409).
  let locked = null; // why, or null
  function applyLock() {
    const ro = Boolean(locked);
    for (const input of measurementsBox.querySelectorAll('input')) input.readOnly = ro;
    for (const input of statementList.querySelectorAll('input[type=text], input:not([type])')) {
      /** @type {HTMLInputElement} */ (input).readOnly = ro;
    }
    for (const el of statementList.querySelectorAll('input[type=checkbox], button')) {
      /** @type {HTMLInputElement | HTMLButtonElement} */ (el).disabled = ro;
    }
    for (const el of [addCode, addText, addCritical, addBtn, saveBtn]) el.disabled = ro;
    for (const fn of aiUpdates) fn();
    replace(lockNotice, locked ?? '');
    lockNotice.hidden = !ro;
    root.querySelector('.ecg-page')?.setAttribute('data-locked', String(ro));
  }
  const onReportState = (event) => {
    if (!ecg || String(event.detail?.studyId) !== String(ecg.study_id)) return;
    locked = event.detail?.locked
      ? 'The report is signed: this ECG is read-only. Start an addendum in the report to correct it.'
      : null;
    applyLock();
  };
  document.addEventListener('rdc:report-state', onReportState);
  cleanups.push(() => document.removeEventListener('rdc:report-state', onReportState));

  // The ECG model's findings (ecg-rhythm), beside the rule statements.
  const aiUpdates = [];
  function renderAiFindings() {
    const findings = ecg.ai_findings ?? [];
    aiUpdates.length = 0;
    const list = h('ul', { class: 'findings' });
    for (const f of findings) {
      const state = h('span', { class: 'badge', testid: 'ecg-ai-review' });
      const accept = h('button', { class: 'btn small accept', type: 'button', testid: 'ecg-ai-accept' }, 'Accept');
      const reject = h('button', { class: 'btn small reject', type: 'button', testid: 'ecg-ai-reject' }, 'Reject');
      const li = h('li', {
        class: f.critical ? 'finding critical' : 'finding', testid: 'ecg-ai-finding',
        dataset: { findingId: String(f.id), label: String(f.label ?? ''), positive: String(Boolean(f.positive)) },
      },
      h('div', { class: 'finding-head' },
        h('span', { class: 'strong', testid: 'ecg-ai-label' }, humanize(f.label ?? '')),
        f.positive ? h('span', { class: 'badge' }, 'present') : h('span', { class: 'badge muted' }, 'absent'),
        state),
      h('div', { class: 'muted small' },
        typeof f.probability === 'number' ? `p = ${(f.probability * 100).toFixed(1)}%` : '',
        typeof f.threshold === 'number' ? ` (threshold ${(f.threshold * 100).toFixed(0)}%)` : '',
        ` · ${f.model ?? '?'}@${f.version ?? '?'} · unverified AI output`),
      h('div', { class: 'finding-actions' }, accept, reject));
      const update = () => {
        const review = f.review ?? 'pending';
        li.dataset.review = review;
        replace(state, review);
        state.className = `badge review-${cls(review)}`;
        accept.disabled = Boolean(locked) || review === 'accepted';
        reject.disabled = Boolean(locked) || review === 'rejected';
      };
      const review = async (decision) => {
        accept.disabled = reject.disabled = true;
        try {
          const out = await api('POST', `/api/ai-findings/${seg(f.id)}/review`, { body: { decision } });
          f.review = out?.review ?? decision;
          showError('');
          document.dispatchEvent(new CustomEvent('rdc:findings-reviewed'));
        } catch (err) {
          showError(message(err));
        }
        update();
      };
      accept.addEventListener('click', () => review('accepted'));
      reject.addEventListener('click', () => review('rejected'));
      update();
      aiUpdates.push(update);
      list.append(li);
    }
    aiBox.replaceChildren(h('h3', {}, `AI rhythm model (${findings.length})`),
      findings.length ? list
        : h('p', { class: 'muted', testid: 'ecg-ai-none' }, 'No AI findings for this ECG (yet).'));
  }

  function renderQuality() {
    const poor = POOR_QUALITY.includes(ecg.quality);
    replace(qualityBox,
      h('span', { class: `badge q-${cls(ecg.quality)}`, testid: 'ecg-quality-grade' }, `quality: ${ecg.quality ?? '?'}`),
      h('span', { class: 'muted small', testid: 'ecg-confidence' }, `confidence ${fmtNumber(ecg.confidence, 2)}`),
      ecg.critical ? h('span', { class: 'badge crit', testid: 'ecg-critical' }, 'CRITICAL') : null,
      poor ? h('div', { class: 'warning', testid: 'ecg-quality-warning', role: 'status' },
        `Signal quality is ${ecg.quality}: check the automatic measurements and statements against the tracing.`) : null,
      ...qualityProblems(ecg.result));
  }

  function renderMeasurements() {
    measurementInputs.clear();
    const m = ecg.measurements ?? {};
    // Values the analysis could not measure stay empty and say why, in plain words.
    const unmeasured = (m.not_measurable && typeof m.not_measurable === 'object') ? m.not_measurable : {};
    const scalar = (n) => m[n] === null || typeof m[n] === 'number';
    // Numbers are editable; the standard ones first. Anything else (per-lead lists,
    // fiducials, flags) is shown read-only and never sent back.
    const names = [...MEASUREMENTS.filter((n) => n in m && scalar(n)),
      ...Object.keys(m).filter((n) => !MEASUREMENTS.includes(n) && scalar(n))];
    const others = Object.keys(m).filter((n) => !scalar(n) && n !== 'not_measurable');
    measurementsBox.replaceChildren(...names.map((name) => {
      const id = `ecg-m-${name}`;
      const input = h('input', { id, type: 'number', step: 'any', testid: `ecg-measurement-${name}`, dataset: { name } });
      input.value = m[name] === null || m[name] === undefined ? '' : String(m[name]);
      measurementInputs.set(name, input);
      const why = (m[name] === null || m[name] === undefined) ? unmeasured[name] : null;
      if (why) input.placeholder = 'not measurable';
      return h('div', { class: why ? 'ecg-m-row unmeasured' : 'ecg-m-row' },
        h('label', { for: id }, measurementLabel(name)), input,
        why ? h('span', { class: 'warning small', testid: `ecg-not-measurable-${name}` },
          `Not measurable: ${why}`) : null);
    }));
    const human = ecg.result?.human_measurement_reasons ?? {};
    if (Object.keys(human).length) {
      measurementsBox.prepend(h('div', { class: 'warning', role: 'status', testid: 'ecg-needs-human' },
        `Needs human measurement: ${Object.keys(human).map(measurementLabel).join(', ')}`));
    }
    if (!names.length) measurementsBox.append(h('p', { class: 'muted' }, 'No measurements.'));
    if (others.length) {
      measurementsBox.append(h('details', { class: 'ecg-m-other', testid: 'ecg-measurements-other' },
        h('summary', { class: 'muted small' }, `Other values (${others.length})`),
        h('dl', { class: 'small' }, others.map((n) => [h('dt', { class: 'muted' }, measurementLabel(n)),
          h('dd', {}, typeof m[n] === 'object' ? JSON.stringify(m[n]) : String(m[n]))]))));
    }
  }

  function renderStatements() {
    statementList.replaceChildren(...statements.map((st, index) => {
      const text = h('input', { testid: 'ecg-statement-text', class: 'ecg-st-text', 'aria-label': 'Statement text' });
      text.value = st.text ?? '';
      text.addEventListener('input', () => { st.text = text.value; });
      const critical = h('input', { type: 'checkbox', testid: 'ecg-statement-critical', checked: Boolean(st.critical) });
      critical.addEventListener('change', () => { st.critical = critical.checked; renderStatements(); });
      const remove = h('button', { class: 'btn small reject', type: 'button', testid: 'ecg-statement-remove', title: 'Remove' }, '✕');
      remove.addEventListener('click', () => { statements.splice(index, 1); renderStatements(); });
      return h('li', { testid: 'ecg-statement', class: st.critical ? 'critical' : null,
        dataset: { code: String(st.code ?? ''), critical: String(Boolean(st.critical)) } },
      st.critical ? h('span', { class: 'badge crit' }, 'CRITICAL') : null,
      h('code', { class: 'small muted', testid: 'ecg-statement-code' }, st.code ?? ''),
      text,
      h('label', { class: 'check small' }, critical, ' critical'),
      remove);
    }));
    if (!statements.length) statementList.append(h('li', { class: 'muted' }, 'No statements.'));
    applyLock();
  }

  function renderPrevious() {
    const prev = ecg.previous;
    if (!prev) {
      previousBox.replaceChildren(h('h3', {}, 'Previous ECG'),
        h('p', { class: 'muted', testid: 'ecg-previous-none' }, 'No previous ECG of this patient.'));
      return;
    }
    const cur = ecg.measurements ?? {};
    const pm = prev.measurements ?? {};
    const names = MEASUREMENTS.filter((n) => n in pm || n in cur);
    previousBox.replaceChildren(
      h('h3', {}, 'Previous ECG ', h('span', { class: 'muted small', testid: 'ecg-previous-date' }, formatDate(prev.date))),
      h('table', { class: 'ecg-compare-table' },
        h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'Now'), h('th', {}, 'Previous'))),
        h('tbody', {}, names.map((n) => h('tr', { testid: 'ecg-previous-measurement', dataset: { name: n } },
          h('td', {}, measurementLabel(n)), h('td', { class: 'num' }, fmtNumber(cur[n])),
          h('td', { class: 'num' }, fmtNumber(pm[n])))))),
      h('h4', {}, 'Previous statements'),
      h('div', { testid: 'ecg-previous-statements' }, statementBadges(prev.statements)),
      h('a', { href: `#/ecg/${seg(prev.id)}`, class: 'small', testid: 'ecg-previous-open' }, 'Open previous ECG'));
  }

  // The report's status in the header follows the report panel: signing there makes it
  // "signed" here at once (the panel tells the page through `rdc:report-state`).
  const statusBadge = h('span', { class: 'badge', testid: 'ecg-report-status' });
  function showStatus(status) {
    if (ecg) ecg.status = status;
    statusBadge.className = `badge st-${cls(status)}`;
    statusBadge.dataset.status = String(status ?? '');
    replace(statusBadge, status ?? '');
  }
  const onReportStatus = (event) => {
    if (!ecg || String(event.detail?.studyId) !== String(ecg.study_id)) return;
    const state = String(event.detail?.state ?? '');
    if (state === 'final' || state === 'amended') showStatus('signed');
    else if (event.detail?.reportId && ecg.status === 'unread') showStatus('reported');
  };
  document.addEventListener('rdc:report-state', onReportStatus);
  cleanups.push(() => document.removeEventListener('rdc:report-state', onReportStatus));

  function renderAll() {
    const who = ageSexText(ecg);
    replace(title,
      h('span', { class: 'strong', testid: 'ecg-patient' }, formatPersonName(ecg.patient_name) || '(no name)'),
      who ? h('span', { class: 'ecg-age-sex', testid: 'ecg-age-sex' }, ` ${who}`) : null,
      h('span', { class: 'muted small' }, ` ${ecg.patient_id ?? ''} · ${ecg.site_name || ecg.site_id || ''} · `),
      statusBadge);
    showStatus(ecg.status ?? '');
    renderQuality();
    renderMeasurements();
    statements = (ecg.statements_full ?? []).map((s) => ({
      code: s.code, text: s.text, critical: Boolean(s.critical), evidence: s.evidence ?? {},
    }));
    renderAiFindings();
    renderStatements();
    renderPrevious();
  }

  addBtn.addEventListener('click', () => {
    if (locked) return;
    const text = addText.value.trim();
    if (!text) {
      showError('Enter the text of the statement to add.');
      return;
    }
    const code = addCode.value.trim()
      || text.toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 64) || 'custom';
    statements.push({ code, text, critical: addCritical.checked, evidence: {} });
    addCode.value = addText.value = '';
    addCritical.checked = false;
    showError('');
    renderStatements();
  });

  saveBtn.addEventListener('click', async () => {
    if (!ecg || locked) return;
    const changed = {};
    for (const [name, input] of measurementInputs) {
      const raw = input.value.trim();
      const before = ecg.measurements?.[name];
      const value = raw === '' ? null : Number(raw);
      if (value !== null && !Number.isFinite(value)) {
        showError(`${measurementLabel(name)}: not a number`);
        return;
      }
      if (value !== (before ?? null)) changed[name] = value;
    }
    const bad = statements.find((s) => !String(s.text ?? '').trim() || !String(s.code ?? '').trim());
    if (bad) {
      showError('Every statement needs a code and a text.');
      return;
    }
    saveBtn.disabled = true;
    replace(saveStatus, 'Saving…');
    showError('');
    try {
      const body = { statements: statements.map((s) => ({ code: s.code, text: s.text.trim(), critical: s.critical, evidence: s.evidence ?? {} })) };
      if (Object.keys(changed).length) body.measurements = changed;
      const out = await api('PUT', `/api/ecg/${seg(ecgId)}`, { body });
      ecg = { ...ecg, measurements: out.measurements, statements_full: out.statements, critical: out.critical, edited_by: out.edited_by };
      renderAll();
      replace(saveStatus, `Saved ${new Date().toLocaleTimeString()}`);
      // The server carries the edit into the open report draft; the panel reloads it.
      document.dispatchEvent(new CustomEvent('rdc:findings-reviewed'));
    } catch (err) {
      showError(message(err));
      replace(saveStatus, '');
    } finally {
      saveBtn.disabled = Boolean(locked);
    }
  });

  (async () => {
    try {
      try {
        ecg = await api('GET', `/api/ecg/${seg(ecgId)}`);
      } catch (err) {
        if (!(err instanceof ApiError) || ![404, 502, 503].includes(err.status)) throw err;
        // The analysis may be there while the archive is not: show what we have.
        ecg = await api('GET', `/api/ecg/${seg(ecgId)}`, { query: { tracing: 'false' } });
        replace(tracingError, `The tracing could not be loaded: ${message(err)}`);
        tracingError.hidden = false;
      }
      if (disposed) return;
      locked = ecg.locked ?? null;
      renderAll();
      paper.setTracing(ecg.tracing ?? null);
      if (ecg.study_id !== null && ecg.study_id !== undefined) {
        cleanups.push(renderReportPanel(reportBox, { study_id: ecg.study_id }));
      }
    } catch (err) {
      if (!disposed) {
        replace(title, 'ECG');
        showError(message(err));
      }
    }
  })();

  return () => {
    disposed = true;
    for (const fn of cleanups.splice(0)) {
      try { fn(); } catch (err) { console.warn('ecg cleanup failed', err); }
    }
  };
}
