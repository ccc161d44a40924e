// @ts-check
import { ApiError, WAVEFORM_MODALITIES, api, ecgOfStudy, me } from '../api.js';
import { formatDate, formatPersonName, h, replace } from '../dom.js';
import { DICOMWEB_BASE, TOOLS, createStackViewer, loadSeriesImageIds } from '../viewer/cornerstone.js';
import { createSegOverlay, loadSegmentations } from '../viewer/segOverlay.js';
import { renderReportPanel } from './report.js';
import { ageSex, canReport, priorityClass, priorityLabel } from './worklist.js';

/** Window presets of CT (Hounsfield units); keys 1–4. */
export const CT_PRESETS = [
  { id: 'lung', label: 'Lung', width: 1500, center: -600, key: '1' },
  { id: 'mediastinum', label: 'Mediastinum', width: 350, center: 50, key: '2' },
  { id: 'bone', label: 'Bone', width: 2000, center: 300, key: '3' },
  { id: 'brain', label: 'Brain', width: 80, center: 40, key: '4' },
];
/** Radiographs, MR, US, ...: no Hounsfield scale, so only the image's own window back. */
const DEFAULT_PRESETS = [{ id: 'default', label: 'Default', key: '1', reset: true }];

/** The window presets that make sense for a series' modality. */
export function presetsFor(modality) {
  return String(modality ?? '').toUpperCase() === 'CT' ? CT_PRESETS : DEFAULT_PRESETS;
}

/** How often the header's "due in" is brought up to date. */
const DUE_TICK_MS = 30_000;

/** Time left at minute precision ("2h 05m", "12m", "< 1m"): it changes every half minute. */
function formatDue(seconds) {
  const m = Math.floor(Math.abs(seconds) / 60);
  if (m >= 24 * 60) return `${Math.floor(m / 1440)}d ${String(Math.floor((m % 1440) / 60)).padStart(2, '0')}h`;
  if (m >= 60) return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
  return m ? `${m}m` : '< 1m';
}

const TOOL_BUTTONS = [
  { tool: TOOLS.windowLevel, label: 'W/L', id: 'wl', key: 'w' },
  { tool: TOOLS.pan, label: 'Pan', id: 'pan', key: 'p' },
  { tool: TOOLS.zoom, label: 'Zoom', id: 'zoom', key: 'z' },
  { tool: TOOLS.length, label: 'Length', id: 'length', key: 'l' },
  { tool: TOOLS.angle, label: 'Angle', id: 'angle', key: 'a' },
  { tool: TOOLS.ellipse, label: 'Ellipse', name: 'Ellipse ROI', id: 'ellipse-roi', key: 'e' },
  { tool: TOOLS.rectangle, label: 'Rect', name: 'Rectangle ROI', id: 'rectangle-roi', key: 'r' },
];

function seg(v) {
  return encodeURIComponent(String(v));
}

/** A waveform (ECG) series: read on the ECG screen, never in the image viewer. */
function isWaveform(series) {
  return WAVEFORM_MODALITIES.includes(String(series?.modality ?? '').toUpperCase());
}

function isImageSeries(series) {
  return (series.kind ?? 'image') === 'image' && !isWaveform(series) && (series.instances ?? []).length > 0;
}

/** Pixels of the first canvas under `selector` that are not black: > 0 once an image shows. */
function nonBlankPixels(selector) {
  /** @type {HTMLCanvasElement | null} */
  const canvas = document.querySelector(`${selector} canvas`);
  if (!canvas) return 0;
  const ctx = canvas.getContext('2d');
  if (!ctx) return 0;
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] || data[i + 1] || data[i + 2]) n += 1;
  return n;
}

/** A fresh test hook for this viewer (see the front end's README section). */
function resetTestHook() {
  /** @type {(viewport: unknown) => void} */
  let resolveReady = () => {};
  const ready = new Promise((resolve) => { resolveReady = resolve; });
  const hook = {
    viewportReady: ready,
    renderedImageCount: 0,
    getViewport: () => null,
    getPriorViewport: () => null,
    /** Pixels of the viewport canvas that are not black: > 0 once an image shows. */
    nonBlankPixelCount: () => nonBlankPixels('[data-testid="viewport"]'),
    /** The same for the prior shown side by side (0 when none is open). */
    priorNonBlankPixelCount: () => nonBlankPixels('[data-testid="prior-viewport"] .viewport'),
    /** AI SEG overlay pixels drawn for the slice on screen (0 when hidden or none). */
    segOverlayPixels: () => 0,
    /** Indices in the stack of the slices the AI SEG marks. */
    segSliceIndices: () => [],
    /** Where the current image lies on its canvas (CSS px), and the canvas size. */
    imageExtent: () => null,
    /** The same for the prior shown side by side. */
    priorImageExtent: () => null,
  };
  window.__rdc = hook;
  return { hook, resolveReady };
}

/** Study page: series, viewer, AI findings, priors, report. Returns a cleanup function. */
/**
 * @param {HTMLElement} root
 * @param {string} studyId
 * @param {PageContext} ctx
 */
export function renderStudy(root, studyId, { navigate }) {
  const disposers = [];
  let viewer = null;
  let disposed = false;
  let segOverlay = null;
  let segments = null; // promise of the study's AI SEG segments, loaded once
  let prior = null; // {viewer, panel, studyId} of the prior shown side by side
  let priorActive = false; // the toolbar and keys act on the prior viewport
  const { hook, resolveReady } = resetTestHook();

  const headerBox = h('section', { class: 'study-header', testid: 'study-header' }, 'Loading study…');
  const error = h('p', { class: 'error', role: 'alert', testid: 'study-error', hidden: true });
  const seriesList = h('ul', { class: 'series-list', testid: 'series-list' });
  const viewportEl = h('div', {
    class: 'viewport', testid: 'viewport', tabindex: '0',
    'aria-label': 'Image viewport: wheel or arrow keys scroll, left drag uses the selected tool, middle pans, right zooms',
  });
  const overlayPos = h('span', { testid: 'viewport-position' });
  const overlayWl = h('span', { testid: 'viewport-wl' });
  const overlayStatus = h('span', { class: 'status', testid: 'viewport-status' });
  const overlay = h('div', { class: 'viewport-overlay' }, overlayPos, overlayWl, overlayStatus);
  const segCanvas = h('canvas', { class: 'seg-overlay', testid: 'seg-overlay', 'aria-hidden': 'true' });
  const segToggle = h('input', { type: 'checkbox', testid: 'seg-toggle', checked: true });
  const segOpacity = h('input', {
    type: 'range', min: '0', max: '100', step: '5', value: '50', testid: 'seg-opacity',
    'aria-label': 'AI segmentation opacity',
  });
  const segLabel = h('span', { class: 'muted small', testid: 'seg-label' });
  const segControls = h('span', { class: 'group seg-controls', hidden: true },
    h('label', { title: 'Show the AI segmentation over the images (S)' }, segToggle, ' AI SEG'),
    segOpacity, segLabel);
  const mainWrap = h('div', { class: 'viewport-wrap' }, viewportEl, segCanvas, overlay);
  const viewportsBox = h('div', { class: 'viewports' }, mainWrap);
  const findingsBox = h('section', { class: 'panel', testid: 'ai-findings' });
  const priorsBox = h('section', { class: 'panel', testid: 'priors' });
  const reportBox = h('section', { class: 'panel report', testid: 'report-panel' });

  const toolButtons = TOOL_BUTTONS.map((t) => h('button', {
    class: 'btn tool', type: 'button', testid: `tool-${t.id}`, title: `${t.name ?? t.label} (${t.key.toUpperCase()})`,
    dataset: { tool: t.tool }, onClick: () => selectTool(t.tool),
  }, t.label));
  // Window presets follow the modality of the series in the active viewport.
  const presetGroup = h('span', { class: 'group presets', testid: 'wl-presets' });
  let presets = [];
  function applyPreset(p) {
    const v = activeViewer();
    if (!v) return;
    if (p.reset) v.resetWindow();
    else v.setWindow(p.width, p.center);
  }
  function renderPresets() {
    const modality = priorActive && prior ? prior.modality : mainModality;
    presets = presetsFor(modality);
    presetGroup.dataset.modality = String(modality ?? '');
    presetGroup.replaceChildren(...presets.map((p) => h('button', {
      class: 'btn preset', type: 'button', testid: `wl-preset-${p.id}`,
      title: p.reset ? `The image's own window (${p.key})` : `W ${p.width} / L ${p.center} (${p.key})`,
      dataset: p.reset ? {} : { width: String(p.width), center: String(p.center) },
      onClick: () => applyPreset(p),
    }, p.label)));
  }
  let mainModality = '';
  const toolbar = h('div', { class: 'viewer-toolbar', role: 'toolbar' },
    h('span', { class: 'group' }, toolButtons),
    presetGroup,
    h('span', { class: 'group' },
      h('button', { class: 'btn', type: 'button', testid: 'viewer-invert', onClick: () => activeViewer()?.invert() }, 'Invert'),
      h('button', { class: 'btn', type: 'button', testid: 'viewer-reset', onClick: () => activeViewer()?.reset() }, 'Reset')),
    segControls);

  root.append(
    headerBox,
    error,
    h('div', { class: 'study-layout' },
      h('aside', { class: 'series-pane' }, h('h3', {}, 'Series'), seriesList),
      h('section', { class: 'viewer-pane' }, toolbar, viewportsBox),
      h('aside', { class: 'side-pane' }, findingsBox, priorsBox, reportBox)),
  );

  function showError(text) {
    replace(error, text);
    error.hidden = !text;
  }

  /** The viewer the toolbar and keys act on: the prior's once it was clicked or focused. */
  function activeViewer() {
    return priorActive && prior?.viewer ? prior.viewer : viewer;
  }

  function setActive(isPrior) {
    priorActive = isPrior && Boolean(prior);
    mainWrap.classList.toggle('active', Boolean(prior) && !priorActive);
    prior?.panel.classList.toggle('active', priorActive);
    renderPresets();
  }
  viewportEl.addEventListener('pointerdown', () => setActive(false));
  viewportEl.addEventListener('focus', () => setActive(false));

  function selectTool(name) {
    if (!viewer) return;
    viewer.setPrimaryTool(name);
    prior?.viewer?.setPrimaryTool(name);
    for (const b of toolButtons) b.classList.toggle('active', b.dataset.tool === name);
  }

  // AI segmentation overlay controls.
  segToggle.addEventListener('change', () => segOverlay?.setVisible(segToggle.checked));
  segOpacity.addEventListener('input', () => segOverlay?.setOpacity(Number(segOpacity.value) / 100));
  hook.segOverlayPixels = () => segOverlay?.drawnPixels() ?? 0;
  hook.segSliceIndices = () => segOverlay?.sliceIndices() ?? [];

  async function attachSegmentations() {
    if (!segments || !viewer) return;
    try {
      const list = await segments;
      if (disposed || !viewer) return;
      if (!segOverlay) {
        segOverlay = createSegOverlay(viewportEl, viewer.viewport, segCanvas);
        segOverlay.setVisible(segToggle.checked);
        segOverlay.setOpacity(Number(segOpacity.value) / 100);
      }
      segOverlay.setSegments(list);
      const labels = [...new Set(segOverlay.labels())];
      replace(segLabel, labels.join(', '));
      segControls.hidden = !list.length;
      viewportEl.dataset.segSlices = String(segOverlay.sliceIndices().length);
    } catch (err) {
      console.warn('viewer: cannot show the AI segmentation', err);
      segControls.hidden = false;
      segToggle.disabled = segOpacity.disabled = true;
      replace(segLabel, `AI SEG not shown: ${err?.message ?? err}`);
    }
  }

  function updateOverlay() {
    if (!viewer) return;
    const { index, count } = viewer.position();
    replace(overlayPos, count ? `Im ${index + 1} / ${count}` : '');
    const wl = viewer.getWindow();
    replace(overlayWl, wl ? `W ${Math.round(wl.width)} L ${Math.round(wl.center)}` : '');
  }

  const onKey = (event) => {
    if (!viewer || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLElement && target.closest('input, textarea, select, [contenteditable="true"]')) return;
    const v = activeViewer();
    const steps = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
    if (event.key in steps) {
      v.scrollBy(steps[event.key]);
    } else if (event.key === 'Home') {
      v.scrollTo(0);
    } else if (event.key === 'End') {
      v.scrollTo(Number.MAX_SAFE_INTEGER);
    } else if (event.key.toLowerCase() === 's' && !segControls.hidden && !segToggle.disabled) {
      segToggle.checked = !segToggle.checked;
      segOverlay?.setVisible(segToggle.checked);
    } else {
      const preset = presets.find((p) => p.key === event.key);
      const tool = TOOL_BUTTONS.find((t) => t.key === event.key.toLowerCase());
      if (preset) applyPreset(preset);
      else if (tool) selectTool(tool.tool);
      else return;
    }
    event.preventDefault();
  };
  document.addEventListener('keydown', onKey);
  disposers.push(() => document.removeEventListener('keydown', onKey));

  async function showSeries(study, series, item) {
    for (const li of seriesList.children) li.classList.toggle('active', li === item);
    replace(overlayStatus, 'Loading…');
    try {
      if (!viewer) {
        viewer = await createStackViewer(viewportEl, {
          onRendered: () => {
            hook.renderedImageCount += 1;
            if (viewportEl.dataset.rendered !== 'true') {
              viewportEl.dataset.rendered = 'true';
              resolveReady(viewer.viewport);
            }
            updateOverlay();
          },
        });
        if (disposed) { viewer.destroy(); return; }
        hook.getViewport = () => viewer?.viewport ?? null;
        hook.imageExtent = () => viewer?.imageExtent() ?? null;
        selectTool(TOOLS.windowLevel);
      }
      const imageIds = await loadSeriesImageIds(study.study_uid, series.series_uid, series.instances);
      if (disposed) return;
      if (!imageIds.length) throw new Error('this series has no displayable images');
      viewportEl.dataset.seriesUid = series.series_uid;
      mainModality = String(series.modality ?? '');
      viewportEl.dataset.modality = mainModality;
      renderPresets();
      await viewer.setStack(imageIds, Math.floor(imageIds.length / 2));
      replace(overlayStatus, '');
      updateOverlay();
      segOverlay?.refresh();
      if (!segOverlay) attachSegmentations();
      viewportEl.focus({ preventScroll: true });
    } catch (err) {
      console.warn('viewer: cannot show series', err);
      replace(overlayStatus, `Cannot display this series: ${err?.message ?? err}`);
    }
  }

  function renderSeries(study) {
    const series = [...(study.series ?? [])].sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
    let first = null;
    seriesList.replaceChildren();
    for (const s of series) {
      const viewable = isImageSeries(s);
      const waveform = isWaveform(s);
      const instances = s.instances ?? [];
      const thumbSop = instances[Math.floor(instances.length / 2)];
      const thumbBase = `${DICOMWEB_BASE}/studies/${seg(study.study_uid)}/series/${seg(s.series_uid)}/instances/${seg(thumbSop)}`;
      const img = viewable && thumbSop
        // Orthanc's DICOMweb answers /rendered (scaled by `viewport`); /thumbnail is the fallback.
        ? h('img', { src: `${thumbBase}/rendered?viewport=128,128`, alt: '', loading: 'lazy', width: '96', height: '96' })
        : h('div', { class: 'thumb-kind' }, waveform ? 'ECG' : String(s.kind ?? '').toUpperCase());
      if (img.tagName === 'IMG') {
        // Fall back to the thumbnail resource once, then to a blank tile.
        img.addEventListener('error', () => {
          if (!img.dataset.fallback) {
            img.dataset.fallback = '1';
            img.src = `${thumbBase}/thumbnail`;
          } else img.classList.add('broken');
        });
      }
      const li = h('li', {
        class: viewable || waveform ? 'series' : 'series disabled', testid: 'series-item',
        dataset: { seriesUid: s.series_uid, kind: waveform ? 'waveform' : s.kind ?? 'image' },
        tabindex: viewable || waveform ? '0' : null,
        title: viewable ? 'Show this series'
          : waveform ? 'A waveform: open it on the ECG screen' : `${s.kind} objects are not shown in the image viewer`,
      },
      img,
      h('div', { class: 'series-label' },
        h('span', { class: 'strong' }, `${s.modality ?? ''} #${s.number ?? ''}`),
        h('span', {}, s.description ?? ''),
        h('span', { class: 'muted small' }, `${instances.length} img`)));
      if (viewable) {
        li.addEventListener('click', () => showSeries(study, s, li));
        li.addEventListener('keydown', (e) => { if (e.key === 'Enter') showSeries(study, s, li); });
        first = first ?? { s, li };
      } else if (waveform) {
        li.addEventListener('click', () => openEcg(study, false));
        li.addEventListener('keydown', (e) => { if (e.key === 'Enter') openEcg(study, false); });
      }
      seriesList.append(li);
    }
    if (first) showSeries(study, first.s, first.li);
    else if (series.some(isWaveform)) openEcg(study, true);
    else replace(overlayStatus, 'No image series in this study.');
  }

  /**
   * A waveform is read on the ECG screen. `instead`: the study has nothing else to show,
   * so a cardiologist goes straight there (replacing this page in the history).
   */
  async function openEcg(study, instead) {
    const cardiologist = (me()?.roles ?? []).includes('cardiologist');
    replace(overlayStatus, 'This study is an ECG waveform: it is read on the ECG screen.');
    viewportEl.dataset.waveform = 'true';
    if (!cardiologist) {
      replace(overlayStatus, 'This study is an ECG waveform: cardiologists read it on the ECG screen.');
      return;
    }
    try {
      const ecgId = await ecgOfStudy(study.study_id);
      if (disposed) return;
      if (ecgId === null) {
        replace(overlayStatus, 'This ECG has not been analysed yet: it will be on the ECG screen once it is.');
      } else if (instead) {
        window.location.replace(`#/ecg/${seg(ecgId)}`);
      } else {
        navigate(`#/ecg/${seg(ecgId)}`);
      }
    } catch (err) {
      replace(overlayStatus, `Cannot open the ECG: ${err instanceof ApiError ? err.message : err}`);
    }
  }

  // "due in" counts down while the study is open: the header keeps the due time and
  // brings the text up to date every DUE_TICK_MS.
  let dueMs = NaN;
  const dueEl = h('span', { class: 'muted due', testid: 'study-due' });
  function tickDue() {
    if (Number.isNaN(dueMs)) {
      dueEl.hidden = true;
      return;
    }
    const left = Math.round((dueMs - Date.now()) / 1000);
    dueEl.hidden = false;
    dueEl.className = left < 0 ? 'overdue due' : 'muted due';
    dueEl.dataset.secondsLeft = String(left);
    replace(dueEl, left < 0 ? `overdue ${formatDue(-left)}` : `due in ${formatDue(left)}`);
  }
  const dueTimer = setInterval(tickDue, DUE_TICK_MS);
  disposers.push(() => clearInterval(dueTimer));

  function renderHeader(study) {
    const user = me();
    const mine = study.claimed_by && study.claimed_by === user?.username;
    const seconds = typeof study.seconds_left === 'number' ? study.seconds_left : null;
    dueMs = study.status === 'signed' ? NaN // read: nothing is due any more
      : seconds !== null ? Date.now() + seconds * 1000
        : study.due_at ? Date.parse(study.due_at) : NaN;
    const label = priorityLabel(study);
    const claimBtn = !canReport(user) ? null : !study.claimed_by
      ? h('button', { class: 'btn primary', type: 'button', testid: 'study-claim' }, 'Claim')
      : mine ? h('button', { class: 'btn', type: 'button', testid: 'study-release' }, 'Release') : null;
    claimBtn?.addEventListener('click', async () => {
      claimBtn.disabled = true;
      try {
        const action = study.claimed_by ? 'release' : 'claim';
        const item = await api('POST', `/api/studies/${seg(study.study_id)}/${action}`);
        Object.assign(study, item ?? {});
        renderHeader(study);
      } catch (err) {
        showError(err instanceof ApiError ? err.message : String(err));
        claimBtn.disabled = false;
      }
    });
    replace(headerBox,
      h('a', { class: 'btn ghost', href: '#/worklist', testid: 'back-to-worklist' }, '‹ Worklist'),
      h('div', { class: 'patient' },
        h('span', { class: 'strong', testid: 'study-patient-name' }, formatPersonName(study.patient_name)),
        h('span', { class: 'muted' }, ` ${study.patient_id ?? ''}`),
        ageSex(study) ? h('span', { class: 'muted', testid: 'study-age-sex' }, ` · ${ageSex(study)}`) : null),
      h('div', { class: 'study-what' }, h('span', { testid: 'study-description' }, study.description ?? ''),
        h('span', { class: 'muted' }, ` · ${[formatDate(study.study_date), (study.modalities ?? []).join('/'),
          study.site_name || study.site_id || ''].filter(Boolean).join(' · ')}`)),
      h('span', { class: `badge prio ${priorityClass(label)}`, testid: 'study-priority' }, label),
      study.ai_critical && label !== 'AI CRITICAL' ? h('span', { class: 'badge crit' }, 'AI CRITICAL') : null,
      h('span', { class: 'muted', testid: 'study-claimed-by' },
        study.claimed_by ? `claimed by ${study.claimed_by}` : 'unclaimed'),
      dueEl,
      claimBtn);
    tickDue();
  }

  // Once the report is signed its AI findings are what it was signed on: read-only
  // until an addendum is started (the server answers 409 meanwhile).
  let findingsLocked = false;
  const findingUpdates = [];
  const onReportState = (event) => {
    if (String(event.detail?.studyId) !== String(studyId)) return;
    findingsLocked = Boolean(event.detail?.locked);
    findingsBox.dataset.locked = String(findingsLocked);
    for (const fn of findingUpdates) fn();
  };
  document.addEventListener('rdc:report-state', onReportState);
  disposers.push(() => document.removeEventListener('rdc:report-state', onReportState));

  function renderFindings(study) {
    const findings = study.ai_findings ?? [];
    const list = h('ul', { class: 'findings' });
    findingUpdates.length = 0;
    for (const f of findings) {
      const state = h('span', { class: `badge review-${String(f.review ?? 'pending').replace(/[^a-z]/g, '')}`, testid: 'ai-finding-review' },
        f.review ?? 'pending');
      const accept = h('button', { class: 'btn small accept', type: 'button', testid: 'ai-finding-accept' }, 'Accept');
      const reject = h('button', { class: 'btn small reject', type: 'button', testid: 'ai-finding-reject' }, 'Reject');
      const li = h('li', {
        class: f.critical ? 'finding critical' : 'finding', testid: 'ai-finding',
        dataset: { findingId: String(f.id), review: String(f.review ?? 'pending') },
      },
      h('div', { class: 'finding-head' },
        h('span', { class: 'strong', testid: 'ai-finding-label' }, f.label ?? ''),
        f.critical ? h('span', { class: 'badge crit', testid: 'ai-finding-critical' }, 'CRITICAL') : null,
        f.positive === false ? h('span', { class: 'badge' }, 'negative') : null,
        state),
      h('div', { class: 'muted small' },
        typeof f.probability === 'number' ? `p = ${(f.probability * 100).toFixed(1)}%` : '',
        typeof f.threshold === 'number' ? ` (threshold ${(f.threshold * 100).toFixed(0)}%)` : '',
        typeof f.volume_ml === 'number' ? ` · ${f.volume_ml.toFixed(1)} mL` : ''),
      h('div', { class: 'muted small', testid: 'ai-finding-model' }, `${f.model ?? '?'}@${f.version ?? '?'} · unverified AI output`),
      h('div', { class: 'finding-actions' }, accept, reject));
      const update = (review) => {
        li.dataset.review = review;
        replace(state, review);
        state.className = `badge review-${String(review).replace(/[^a-z]/g, '')}`;
        accept.disabled = findingsLocked || review === 'accepted';
        reject.disabled = findingsLocked || review === 'rejected';
        const why = findingsLocked ? 'The report is signed: start an addendum to change the review' : null;
        for (const b of [accept, reject]) {
          if (why) b.title = why;
          else b.removeAttribute('title');
        }
      };
      update(f.review ?? 'pending');
      findingUpdates.push(() => update(f.review ?? 'pending'));
      const review = async (decision) => {
        accept.disabled = reject.disabled = true;
        try {
          const out = await api('POST', `/api/ai-findings/${seg(f.id)}/review`, { body: { decision } });
          f.review = out?.review ?? decision;
          // The server puts accepted findings into the open draft; the report panel reloads it.
          document.dispatchEvent(new CustomEvent('rdc:findings-reviewed'));
        } catch (err) {
          showError(err instanceof ApiError ? err.message : String(err));
        }
        update(f.review ?? 'pending');
      };
      accept.addEventListener('click', () => review('accepted'));
      reject.addEventListener('click', () => review('rejected'));
      list.append(li);
    }
    replace(findingsBox, h('h3', {}, `AI findings (${findings.length})`),
      findings.length ? list : h('p', { class: 'muted' }, 'No AI findings for this study.'));
  }

  function closePrior() {
    if (!prior) return;
    const { viewer: v, panel } = prior;
    prior = null;
    v?.destroy();
    panel.remove();
    setActive(false);
    viewportsBox.classList.remove('side-by-side');
    viewer?.fit(); // the current image gets its whole width back
  }
  disposers.push(closePrior);

  /** Show prior `p` (an item of study.priors) in a second viewport beside the current one. */
  async function openPrior(study, p) {
    closePrior();
    const weak = p.match === 'name+birthdate';
    const priorEl = h('div', {
      class: 'viewport', testid: 'prior-viewport-image', tabindex: '0',
      'aria-label': 'Prior study viewport: wheel or arrow keys scroll, left drag uses the selected tool',
    });
    const pos = h('span', { testid: 'prior-viewport-position' });
    const wl = h('span', { testid: 'prior-viewport-wl' });
    const status = h('span', { class: 'status', testid: 'prior-viewport-status' }, 'Loading prior…');
    const seriesSelect = h('select', { testid: 'prior-series', 'aria-label': 'Prior series', hidden: true });
    const close = h('button', {
      class: 'btn small', type: 'button', testid: 'prior-close', title: 'Close the prior', 'aria-label': 'Close the prior',
    }, '✕ Close');
    const title = h('span', { class: 'strong', testid: 'prior-title' },
      [p.site_name || p.site_id || '', formatDate(p.date), p.description ?? ''].filter(Boolean).join(' · '));
    const panel = h('section', {
      class: weak ? 'prior-panel weak' : 'prior-panel', testid: 'prior-viewport',
      dataset: { studyId: String(p.study_id), match: String(p.match ?? '') },
    },
    h('header', { class: 'prior-header' },
      h('div', { class: 'prior-head-row' }, h('span', { class: 'badge' }, 'PRIOR'), title, seriesSelect, close),
      weak ? h('div', { class: 'prior-warning-banner', role: 'alert', testid: 'prior-warning' },
        '⚠ matched by name and birth date only: check it is the same patient') : null),
    h('div', { class: 'viewport-wrap' }, priorEl,
      h('div', { class: 'viewport-overlay' }, pos, wl, status)));
    const current = { viewer: null, panel, studyId: p.study_id, modality: '' };
    prior = current;
    close.addEventListener('click', closePrior);
    priorEl.addEventListener('pointerdown', () => setActive(true));
    priorEl.addEventListener('focus', () => setActive(true));
    viewportsBox.append(panel);
    viewportsBox.classList.add('side-by-side');
    setActive(false);
    viewer?.fit(); // half the width now: fit the current image into it again

    const update = () => {
      const v = current.viewer;
      if (!v) return;
      const { index, count } = v.position();
      replace(pos, count ? `Im ${index + 1} / ${count}` : '');
      const w = v.getWindow();
      replace(wl, w ? `W ${Math.round(w.width)} L ${Math.round(w.center)}` : '');
    };
    try {
      const other = await api('GET', `/api/studies/${seg(p.study_id)}`);
      if (disposed || prior !== current) return;
      replace(title, [other.site_name || p.site_id || other.site_id || '', formatDate(p.date),
        p.description || other.description || ''].filter(Boolean).join(' · '));
      const images = [...(other.series ?? [])]
        .filter(isImageSeries)
        .sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
      if (!images.length) throw new Error('the prior has no image series');
      current.viewer = await createStackViewer(priorEl, {
        onRendered: () => {
          if (priorEl.dataset.rendered !== 'true') priorEl.dataset.rendered = 'true';
          update();
        },
      });
      if (disposed || prior !== current) { current.viewer.destroy(); current.viewer = null; return; }
      hook.getPriorViewport = () => (prior === current ? current.viewer?.viewport ?? null : null);
      hook.priorImageExtent = () => (prior === current ? current.viewer?.imageExtent() ?? null : null);
      if (viewer?.primaryTool) current.viewer.setPrimaryTool(viewer.primaryTool);
      const show = async (s) => {
        replace(status, 'Loading…');
        try {
          const ids = await loadSeriesImageIds(other.study_uid, s.series_uid, s.instances);
          if (disposed || prior !== current) return;
          if (!ids.length) throw new Error('this series has no displayable images');
          priorEl.dataset.seriesUid = s.series_uid;
          current.modality = String(s.modality ?? '');
          if (priorActive && prior === current) renderPresets();
          await current.viewer.setStack(ids, Math.floor(ids.length / 2));
          replace(status, '');
          update();
        } catch (err) {
          console.warn('viewer: cannot show prior series', err);
          replace(status, `Cannot display this series: ${err?.message ?? err}`);
        }
      };
      if (images.length > 1) {
        for (const [i, s] of images.entries()) {
          seriesSelect.append(h('option', { value: String(i) },
            `${s.modality ?? ''} #${s.number ?? ''} ${s.description ?? ''}`.trim()));
        }
        seriesSelect.hidden = false;
        seriesSelect.addEventListener('change', () => show(images[Number(seriesSelect.value)]));
      }
      await show(images[0]);
    } catch (err) {
      if (prior !== current) return;
      replace(status, `Cannot open the prior: ${err instanceof ApiError ? err.message : err?.message ?? err}`);
    }
  }

  function renderPriors(study) {
    const priors = study.priors ?? [];
    const list = h('ul', { class: 'priors' });
    for (const p of priors) {
      const weak = p.match === 'name+birthdate';
      list.append(h('li', { class: weak ? 'prior weak' : 'prior', testid: 'prior-item', dataset: { match: String(p.match ?? '') } },
        h('a', {
        href: `#/study/${seg(p.study_id)}`, testid: 'prior-open', title: 'Show side by side (Ctrl+click: open the study)',
        onClick: (event) => {
          if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
          event.preventDefault();
          openPrior(study, p);
        },
      }, `${formatDate(p.date)} ${p.description ?? ''}`),
        h('span', { class: 'muted small' }, ` · ${p.site_id ?? ''} · matched by ${p.match === 'id' ? 'patient ID' : p.match}`),
        weak ? h('div', { class: 'warning', role: 'note', testid: 'prior-warning' },
          '⚠ Matched by name and birth date only — confirm this is the same patient before comparing.') : null));
    }
    replace(priorsBox, h('h3', {}, `Priors (${priors.length})`),
      priors.length ? list : h('p', { class: 'muted' }, 'No prior studies found.'));
  }

  (async () => {
    try {
      const study = await api('GET', `/api/studies/${seg(studyId)}`);
      if (disposed) return;
      renderHeader(study);
      renderFindings(study);
      renderPriors(study);
      disposers.push(renderReportPanel(reportBox, study));
      const segSeries = (study.series ?? []).filter((x) => x.kind === 'seg' && (x.instances ?? []).length);
      if (segSeries.length) {
        segments = loadSegmentations(study.study_uid, segSeries);
        segments.catch(() => {}); // reported where it is awaited
      }
      renderSeries(study);
    } catch (err) {
      replace(headerBox, h('a', { class: 'btn ghost', href: '#/worklist' }, '‹ Worklist'));
      showError(err instanceof ApiError ? err.message : String(err));
    }
  })();

  return () => {
    disposed = true;
    for (const d of disposers) d();
    segOverlay?.destroy();
    segOverlay = null;
    viewer?.destroy();
    viewer = null;
  };
}
