// @ts-check
// A pathology case (#/pathology/case/<id>[?slides=a,b]): the case's facts, claim and
// release, its timeline (the frozen-section steps, with "enter intra-op call"), the slide
// tray, one slide or two synchronised side by side in OpenSeadragon with annotation
// tools and overlays, second opinions, and the synoptic report (the app's report panel,
// signed through the pathology route so that the case moves to signed).
import { ApiError, api } from '../api.js';
import { formatDateTime, formatPersonName, h, replace } from '../dom.js';
import { renderReportPanel } from './report.js';
import { pathologyTabs } from './pathology.js';
import { renderCaseConsults } from './pathology_consult_form.js';
import {
  canClaim, casePath, isPathologist, qcText, slideName, timelineRows, urgencyBadge,
} from './pathology_format.js';
import { measureText } from './slide_geometry.js';
import { createSlideView, synchroniser } from './slide_viewer.js';

/** @typedef {import('./slide_viewer.js').SlideView} SlideView */
/** @typedef {import('./slide_viewer.js').Slide} Slide */
/** @typedef {import('./slide_annotations.js').AnnotationLayer} AnnotationLayer */
/** @typedef {Record<string, any>} CaseDetail */

const TOOLS = [
  ['', 'Pan', 'Move and zoom (mouse wheel)'],
  ['point', 'Point', 'Mark a point'],
  ['line', 'Measure', 'Drag a line: its length in µm'],
  ['polygon', 'Polygon', 'Click the corners, double-click to close'],
  ['freehand', 'Free hand', 'Drag to draw'],
  ['text', 'Note', 'Click where the note goes (type it first)'],
];

/** @param {unknown} v */
const seg = (v) => encodeURIComponent(String(v));
/** @param {unknown} err */
const message = (err) => (err instanceof ApiError ? err.message : err instanceof Error ? err.message : String(err));

/**
 * @param {HTMLElement} root
 * @param {string} caseId
 * @param {number[]} slideIds the slides to show (none: the first)
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderPathologyCase(root, caseId, slideIds, { navigate, user }) {
  const pathologist = isPathologist(user);
  /** @type {(() => void)[]} */
  const cleanups = [];
  /** @type {SlideView[]} */
  let views = [];
  /** @type {SlideView | null} */
  let active = null;
  /** @type {CaseDetail | null} */
  let detail = null;
  let disposed = false;

  const error = h('p', { class: 'error', role: 'alert', testid: 'case-error', hidden: true });
  const head = h('div', { class: 'case-head', testid: 'case-head' }, 'Loading case…');
  const tray = h('ul', { class: 'slide-tray', testid: 'slide-tray' });
  const viewerRow = h('div', { class: 'viewer-row', testid: 'viewer-row' });
  const toolbar = h('div', { class: 'slide-toolbar', testid: 'slide-toolbar' });
  const timeline = h('section', { class: 'case-section', testid: 'case-timeline' });
  const annotationsBox = h('section', { class: 'case-section', testid: 'case-annotations' });
  const consultsBox = h('section', { class: 'case-section', testid: 'case-consults' });
  const reportBox = h('section', { class: 'case-section report-panel', testid: 'case-report' });

  root.append(pathologyTabs('cases', user), h('div', { class: 'pathology-case' },
    head, error,
    h('div', { class: 'case-body' },
      h('aside', { class: 'case-tray' }, h('h3', {}, 'Slides'), tray),
      h('div', { class: 'case-viewer' }, toolbar, viewerRow),
      h('aside', { class: 'case-side' }, timeline, annotationsBox, consultsBox, reportBox))));

  /** @param {string} text */
  function showError(text) {
    replace(error, text);
    error.hidden = !text;
  }

  async function loadDetail() {
    detail = await api('GET', `/api/pathology/cases/${seg(caseId)}`);
    return detail;
  }

  // --- the case's facts, claim, release -------------------------------------------
  function renderHead() {
    if (!detail) return;
    const d = detail;
    const badge = urgencyBadge(d.urgency);
    const claim = h('button', { class: 'btn primary', type: 'button', testid: 'case-claim', hidden: !canClaim(user, d) }, 'Claim');
    const signed = ['signed', 'amended'].includes(String(d.state));
    const release = h('button', { class: 'btn', type: 'button', testid: 'case-release', hidden: !(pathologist && d.mine && !signed) }, 'Release');
    claim.addEventListener('click', () => claimAction('claim', claim));
    release.addEventListener('click', () => claimAction('release', release));
    replace(head,
      h('a', { href: '#/pathology', class: 'btn ghost small', testid: 'case-back' }, '‹ Cases'),
      h('span', { class: `badge ${badge.cls}`, testid: 'case-urgency' }, badge.label),
      h('h2', { testid: 'case-accession' }, d.accession_number ?? `case ${caseId}`),
      h('span', { class: 'strong' }, formatPersonName(d.patient_name)),
      h('span', { class: 'muted' }, d.patient_id ?? ''),
      h('span', {}, d.organ ? `· ${d.organ}` : ''),
      h('span', { class: 'muted' }, `· ${d.site_id ?? ''}`),
      h('span', { class: 'badge', testid: 'case-state', dataset: { state: String(d.state ?? '') } }, d.state ?? ''),
      h('span', { class: `badge qc-${String(d.qc ?? 'pending').replace(/[^a-z]/g, '')}`, testid: 'case-qc' }, qcText(d)),
      d.assigned_name ? h('span', { class: 'muted', testid: 'case-holder' }, `read by ${d.assigned_name}`) : null,
      h('span', { class: 'spacer' }),
      claim, release);
  }

  /**
   * @param {'claim' | 'release'} action
   * @param {HTMLButtonElement} button
   */
  async function claimAction(action, button) {
    button.disabled = true;
    try {
      await api('POST', `/api/pathology/cases/${seg(caseId)}/${action}`);
      showError('');
      await loadDetail();
      renderHead();
      renderTimeline();
      renderReport();
    } catch (err) {
      showError(message(err));
      button.disabled = false;
    }
  }

  // --- timeline and the intra-op call -----------------------------------------------
  function renderTimeline() {
    if (!detail) return;
    const d = detail;
    const frozen = d.urgency === 'frozen';
    const rows = timelineRows(d.timeline ?? [], frozen);
    const list = h('ol', { class: 'timeline' }, rows.map((r) => h('li', {
      testid: 'timeline-step', dataset: { step: r.step, done: String(Boolean(r.at)) }, class: r.at ? 'done' : 'pending',
    }, h('span', { class: 'strong' }, r.label), ' ',
    h('span', { class: 'muted small' }, r.at ? formatDateTime(r.at) : 'not yet'),
    r.actor ? h('span', { class: 'muted small' }, ` · ${r.actor}`) : null)));
    /** @type {HTMLElement | null} */
    let call = null;
    if (frozen && pathologist && !rows.some((r) => r.step === 'call' && r.at)) {
      const text = h('textarea', { rows: '2', testid: 'call-text', placeholder: 'What the surgeon was told' });
      const send = h('button', { class: 'btn primary small', type: 'submit', testid: 'call-submit' }, 'Enter intra-op call');
      call = h('form', { class: 'call-form', testid: 'call-form' }, h('label', {}, 'Intra-op call'), text, send);
      call.addEventListener('submit', async (event) => {
        event.preventDefault();
        if (!text.value.trim()) return;
        send.disabled = true;
        try {
          await api('POST', `/api/pathology/cases/${seg(caseId)}/call`, { body: { text: text.value.trim() } });
          await loadDetail();
          renderTimeline();
          showError('');
        } catch (err) {
          showError(message(err));
          send.disabled = false;
        }
      });
    }
    replace(timeline, h('h3', {}, frozen ? 'Frozen section timeline' : 'Timeline'), list, call);
  }

  // --- slide tray -------------------------------------------------------------------
  /** @param {Slide[]} slides @param {number[]} shown */
  function renderTray(slides, shown) {
    tray.replaceChildren(...slides.map((s) => {
      const failed = s.qc_grade === 'fail';
      const open = () => navigate(casePath(caseId, [s.id]));
      const thumb = h('img', {
        src: `/api/pathology/slides/${seg(s.id)}/thumbnail`, alt: `thumbnail of ${slideName(s)}`, loading: 'lazy',
        class: 'slide-thumb', testid: 'slide-thumb',
      });
      const label = s.has_label_image ? h('img', {
        src: `/api/pathology/slides/${seg(s.id)}/label`, alt: 'slide label', class: 'slide-label-img', testid: 'slide-label-image', loading: 'lazy',
      }) : null;
      const side = h('button', {
        class: 'btn small ghost', type: 'button', testid: 'slide-compare', title: 'Show beside the slide on screen',
        disabled: shown.includes(s.id) || !shown.length,
        onClick: (/** @type {Event} */ e) => { e.stopPropagation(); navigate(casePath(caseId, [shown[0], s.id])); },
      }, '⇆');
      const li = h('li', {
        class: ['slide-tray-item', shown.includes(s.id) ? 'shown' : '', failed ? 'qc-failed' : ''].join(' ').trim(),
        testid: 'slide-tray-item', dataset: { slideId: String(s.id), qc: String(s.qc_grade ?? '') },
        tabindex: '0', title: failed ? `QC failed: ${(s.qc_reasons ?? []).join('; ')}` : null,
      }, h('button', { class: 'slide-open', type: 'button', testid: 'slide-open', onClick: open }, thumb, label),
      h('div', { class: 'slide-name' }, slideName(s), ' ', side),
      failed ? h('div', { class: 'badge qc-fail small', testid: 'slide-qc-failed' }, 'QC failed') : null);
      return li;
    }));
  }

  // --- viewers, tools, overlays -----------------------------------------------------
  let syncOn = true;
  const noteText = h('input', { type: 'text', testid: 'note-text', placeholder: 'Note text', size: 14 });
  const saveAnn = h('button', { class: 'btn primary small', type: 'button', testid: 'annotations-save', disabled: true }, 'Save annotations');
  const discardAnn = h('button', { class: 'btn small', type: 'button', testid: 'annotations-discard', disabled: true }, 'Discard');
  const annStatus = h('span', { class: 'muted small', testid: 'annotations-status', 'aria-live': 'polite' });
  const qcToggle = h('input', { type: 'checkbox', testid: 'overlay-qc' });
  const aiToggle = h('input', { type: 'checkbox', testid: 'overlay-ai' });
  const aiNote = h('span', {
    class: 'warning small nowrap', testid: 'ai-demo-note', hidden: true,
    title: 'The AI heat map comes from a demonstration model: UNVERIFIED, not for diagnosis',
  }, 'demo model, UNVERIFIED');
  const syncToggle = h('input', { type: 'checkbox', testid: 'sync-views', checked: true });
  const toolButtons = TOOLS.map(([tool, label, title]) => h('button', {
    class: `btn small tool${tool === '' ? ' active' : ''}`, type: 'button', testid: `tool-${tool || 'pan'}`, title,
    dataset: { tool },
  }, label));

  /** @param {string} tool */
  function setTool(tool) {
    for (const b of toolButtons) b.classList.toggle('active', b.dataset.tool === tool);
    for (const v of views) v.annotations()?.setTool(v === active ? tool || null : null);
  }
  for (const b of toolButtons) b.addEventListener('click', () => setTool(b.dataset.tool ?? ''));
  noteText.addEventListener('input', () => { for (const v of views) v.annotations()?.setNoteText(noteText.value); });
  viewerRow.addEventListener('rdc:note-missing', () => {
    replace(annStatus, 'Type the note first, then click where it goes.');
    noteText.focus();
  });
  syncToggle.addEventListener('change', () => { syncOn = syncToggle.checked; });
  qcToggle.addEventListener('change', () => overlays('qc', qcToggle.checked));
  aiToggle.addEventListener('change', () => overlays('ai', aiToggle.checked));
  saveAnn.addEventListener('click', saveAnnotations);
  discardAnn.addEventListener('click', () => { active?.annotations()?.clearPending(); });

  /** @param {'qc' | 'ai'} which @param {boolean} on */
  async function overlays(which, on) {
    if (which === 'ai') aiNote.hidden = !on;
    try {
      await Promise.all(views.map((v) => (which === 'qc' ? v.showQc(on) : v.slide.has_heatmap || !on ? v.showAi(on) : null)));
      showError('');
    } catch (err) {
      showError(`${which === 'qc' ? 'QC' : 'AI'} overlay: ${message(err)}`);
    }
  }

  function renderToolbar() {
    const annotate = pathologist;
    const anyHeatmap = views.some((v) => v.slide.has_heatmap);
    aiToggle.disabled = !anyHeatmap;
    replace(toolbar,
      annotate ? h('div', { class: 'tool-group', role: 'group', 'aria-label': 'Annotation tools' }, toolButtons, noteText) : null,
      annotate ? h('div', { class: 'tool-group' }, saveAnn, discardAnn, annStatus) : null,
      h('span', { class: 'spacer' }),
      h('label', { class: 'check' }, qcToggle, ' QC flags'),
      h('label', { class: 'check', title: anyHeatmap ? '' : 'No AI heat map for these slides' }, aiToggle, ' AI heat map'),
      aiNote,
      views.length > 1 ? h('label', { class: 'check' }, syncToggle, ' Sync') : null);
  }

  /** @param {AnnotationLayer} layer */
  function renderAnnotationList(layer) {
    const slide = views.find((v) => v.annotations() === layer)?.slide ?? active?.slide;
    const item = (/** @type {import('./slide_annotations.js').Annotation} */ a, /** @type {string} */ state) => h('li', {
      testid: 'annotation-item', dataset: { kind: a.kind, state },
    }, h('span', { class: `badge ann-badge-${state}` }, a.kind), ' ',
    a.text ? h('span', { testid: 'annotation-text' }, a.text) : null, ' ',
    h('span', { class: 'muted small', testid: 'annotation-measure' }, measureText(a, slide?.mpp)),
    a.author ? h('span', { class: 'muted small' }, ` · ${a.author}`) : null);
    const saved = layer.saved();
    const pending = layer.pending();
    replace(annotationsBox, h('h3', {}, `Annotations${slide ? ` · ${slideName(slide)}` : ''}`),
      saved.length || pending.length ? h('ul', { class: 'annotation-list' },
        saved.map((a) => item(a, 'saved')), pending.map((a) => item(a, 'new')))
        : h('p', { class: 'muted small' }, 'None yet.'),
      slide && !slide.mpp ? h('p', { class: 'warning small' }, 'This slide has no pixel spacing: lengths cannot be given in µm.') : null);
    saveAnn.disabled = discardAnn.disabled = !pending.length;
    replace(saveAnn, pending.length ? `Save annotations (${pending.length})` : 'Save annotations');
  }

  async function loadAnnotations(/** @type {SlideView} */ view) {
    const data = await api('GET', `/api/pathology/slides/${seg(view.slide.id)}/annotations`);
    view.annotations()?.setSaved(Array.isArray(data?.annotations) ? data.annotations : []);
  }

  async function saveAnnotations() {
    const view = active;
    const layer = view?.annotations();
    if (!view || !layer || !layer.pending().length) return;
    saveAnn.disabled = true;
    replace(annStatus, 'Saving…');
    try {
      const body = { annotations: layer.pending().map((a) => ({ kind: a.kind, coords: a.coords, text: a.text ?? '' })) };
      const data = await api('POST', `/api/pathology/slides/${seg(view.slide.id)}/annotations`, { body });
      layer.clearPending();
      layer.setSaved(Array.isArray(data?.annotations) ? data.annotations : []);
      replace(annStatus, `Saved ${new Date().toLocaleTimeString()}`);
      annotationsBox.dataset.sop = String(data?.sop_instance_uid ?? '');
    } catch (err) {
      replace(annStatus, '');
      showError(`Annotations not saved: ${message(err)}`);
      saveAnn.disabled = false;
    }
  }

  /** @param {Slide[]} shown */
  function openViews(shown) {
    viewerRow.classList.toggle('side-by-side', shown.length > 1);
    const sync = synchroniser(() => views, () => syncOn);
    views = shown.map((slide) => {
      const panel = h('div', { class: 'slide-panel', testid: 'slide-panel', dataset: { slideId: String(slide.id) } },
        h('div', { class: 'slide-panel-title' }, slideName(slide),
          slide.qc_grade === 'fail' ? h('span', { class: 'badge qc-fail small' }, 'QC failed') : null,
          slide.mpp ? h('span', { class: 'muted small', testid: 'slide-mpp' }, ` · ${Number(slide.mpp.toPrecision(3))} µm/px`) : null));
      viewerRow.append(panel);
      return createSlideView(panel, slide, {
        onActivate: (v) => activate(v),
        onViewChange: sync,
        onAnnotations: (layer) => { if (active?.annotations() === layer) renderAnnotationList(layer); },
      });
    });
    active = views[0] ?? null;
    activate(active);
    renderToolbar();
    for (const v of views) {
      v.ready.then(() => {
        if (disposed) return undefined;
        const tool = toolButtons.find((b) => b.classList.contains('active'))?.dataset.tool ?? '';
        v.annotations()?.setTool(v === active ? tool || null : null);
        // A view that opens after its partner starts where the partner is.
        const partner = views.find((o) => o !== v && o.opened());
        if (partner) sync(partner);
        return loadAnnotations(v);
      }).catch((err) => showError(message(err)));
    }
    if (__RDC_TEST_HOOKS__ && views[0]) {
      const first = views[0];
      const hook = window.__rdc ?? (window.__rdc = { viewportReady: new Promise(() => {}), renderedImageCount: 0, getViewport: () => null });
      hook.slideViewer = {
        ready: Promise.all(views.map((v) => v.ready)).then(() => undefined),
        fullyLoaded: () => views.every((v) => v.fullyLoaded()),
        zoomTo: (level) => first.zoomTo(level),
        panToElement: (x, y) => first.panToElement(x, y),
        get viewer() { return first.viewer; },
        views: () => views.length,
      };
    }
  }

  /** @param {SlideView | null} v */
  function activate(v) {
    if (!v) return;
    const tool = toolButtons.find((b) => b.classList.contains('active'))?.dataset.tool ?? '';
    if (active !== v) {
      active?.annotations()?.setTool(null);
      active = v;
      v.annotations()?.setTool(tool || null);
    }
    for (const panel of viewerRow.children) {
      panel.classList.toggle('active', panel instanceof HTMLElement && panel.dataset.slideId === String(v.slide.id));
    }
    const layer = v.annotations();
    if (layer) renderAnnotationList(layer);
  }

  // --- second opinions and report ----------------------------------------------------
  function renderConsults() {
    if (!detail) return;
    cleanups.push(renderCaseConsults(consultsBox, detail, user, async () => {
      await loadDetail();
      renderConsults();
      renderTimeline();
    }));
  }

  let reportMounted = false;
  function renderReport() {
    if (!detail || reportMounted) return;
    const d = detail;
    const studyId = d.study_id;
    if (d.report) {
      reportMounted = true;
      reportBox.replaceChildren();
      cleanups.push(renderReportPanel(reportBox, { study_id: studyId, report_id: d.report.id }, {
        // Signing goes through the pathology route: it signs the same report through the
        // report service and moves the case to signed.
        sign: async (/** @type {unknown} */ body) => {
          await api('POST', `/api/pathology/cases/${seg(caseId)}/sign`, { body });
          const after = await api('GET', `/api/studies/${seg(studyId)}/report`);
          loadDetail().then(() => { renderHead(); renderTimeline(); }).catch(() => {});
          return after;
        },
      }));
      return;
    }
    const start = h('button', { class: 'btn primary', type: 'button', testid: 'report-create' }, 'Start the synoptic report');
    start.addEventListener('click', async () => {
      start.disabled = true;
      try {
        await api('POST', `/api/pathology/cases/${seg(caseId)}/report`);
        await loadDetail();
        renderReport();
      } catch (err) {
        showError(message(err));
        start.disabled = false;
      }
    });
    replace(reportBox, h('h3', {}, 'Report'),
      pathologist ? start : h('p', { class: 'muted', testid: 'report-none' }, 'No signed report yet.'));
  }

  (async () => {
    try {
      const d = await loadDetail();
      if (disposed || !d) return;
      renderHead();
      renderTimeline();
      /** @type {Slide[]} */
      const slides = Array.isArray(d.slides) ? d.slides : [];
      const shown = slideIds.map((id) => slides.find((s) => s.id === id)).filter((s) => s !== undefined);
      if (!shown.length && slides.length) shown.push(slides[0]);
      renderTray(slides, shown.map((s) => s.id));
      if (shown.length) openViews(shown);
      else replace(viewerRow, h('p', { class: 'muted', testid: 'no-slides' }, 'This case has no slides yet.'));
      renderConsults();
      renderReport();
    } catch (err) {
      replace(head, h('a', { href: '#/pathology', class: 'btn ghost small' }, '‹ Cases'));
      showError(message(err));
    }
  })();

  return () => {
    disposed = true;
    for (const fn of cleanups) {
      try {
        fn();
      } catch (err) {
        console.warn('pathology case: cleanup failed', err);
      }
    }
    for (const v of views) v.destroy();
    views = [];
    if (__RDC_TEST_HOOKS__ && window.__rdc) delete window.__rdc.slideViewer;
  };
}
