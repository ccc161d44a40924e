// @ts-check
// The study page's main viewport: the Cornerstone stack viewer of the chosen series, its
// overlay (position, window, status), the AI segmentation overlay and its controls, and
// the box the prior joins side by side (priors.js). ECG series are sent to the ECG screen.
import { ApiError, ecgOfStudy, me } from '../../api.js';
import { h, replace } from '../../dom.js';
import { createStackViewer, loadSeriesImageIds } from '../../viewer/cornerstone.js';
import { createSegOverlay } from '../../viewer/segOverlay.js';
import { seg } from './state.js';

/** @typedef {import('./state.js').StudyState} StudyState */
/** @typedef {import('./state.js').Study} Study */
/** @typedef {import('./state.js').Series} Series */
/** @typedef {import('./state.js').SegOverlay} SegOverlay */
/** @typedef {Awaited<ReturnType<typeof import('../../viewer/segOverlay.js').loadSegmentations>>} Segments */

/**
 * What the viewport asks of the toolbar: new presets when the active modality changes,
 * the default tool once the viewer exists.
 * @typedef {{ renderPresets: () => void,
 *   selectTool: (tool: import('./keys.js').ToolButton['tool']) => void }} ToolbarLink
 */

/**
 * @typedef {object} Viewport
 * @property {HTMLElement} el  the viewports' box (the prior is added to it side by side)
 * @property {HTMLElement} mainWrap  the main viewport with its overlays
 * @property {HTMLElement} segControls  the AI SEG controls (shown in the toolbar)
 * @property {() => boolean} segToggleable  the AI SEG is shown and can be toggled
 * @property {() => void} toggleSeg  show or hide the AI SEG (key S)
 * @property {(isPrior: boolean) => void} setActive  the toolbar and keys act on the prior, or not
 * @property {(study: Study, series: Series) => Promise<void>} showSeries
 * @property {(study: Study, instead: boolean) => Promise<void>} openEcg
 * @property {(segments: Promise<Segments>) => void} setSegments  the study's AI SEG, loading
 * @property {(text: string) => void} setStatus
 * @property {() => void} destroy
 */

/**
 * @param {StudyState} state
 * @param {ToolbarLink} toolbar
 * @returns {Viewport}
 */
export function mountViewport(state, toolbar) {
  /** @type {SegOverlay | null} */
  let segOverlay = null;
  /** @type {Promise<Segments> | null} */
  let segments = null; // the study's AI SEG segments, loaded once

  const viewportEl = /** @type {HTMLDivElement} */ (h('div', {
    class: 'viewport', testid: 'viewport', tabindex: '0',
    'aria-label': 'Image viewport: wheel or arrow keys scroll, left drag uses the selected tool, middle pans, right zooms',
  }));
  const overlayPos = h('span', { testid: 'viewport-position' });
  const overlayWl = h('span', { testid: 'viewport-wl' });
  const overlayStatus = h('span', { class: 'status', testid: 'viewport-status' });
  const overlay = h('div', { class: 'viewport-overlay' }, overlayPos, overlayWl, overlayStatus);
  const segCanvas = /** @type {HTMLCanvasElement} */ (
    h('canvas', { class: 'seg-overlay', testid: 'seg-overlay', 'aria-hidden': 'true' }));
  const segToggle = /** @type {HTMLInputElement} */ (h('input', { type: 'checkbox', testid: 'seg-toggle', checked: true }));
  const segOpacity = /** @type {HTMLInputElement} */ (h('input', {
    type: 'range', min: '0', max: '100', step: '5', value: '50', testid: 'seg-opacity',
    'aria-label': 'AI segmentation opacity',
  }));
  const segLabel = h('span', { class: 'muted small', testid: 'seg-label' });
  const segControls = h('span', { class: 'group seg-controls', hidden: true },
    h('label', { title: 'Show the AI segmentation over the images (S)' }, segToggle, ' AI SEG'),
    segOpacity, segLabel);
  const mainWrap = h('div', { class: 'viewport-wrap' }, viewportEl, segCanvas, overlay);
  const viewportsBox = h('div', { class: 'viewports' }, mainWrap);

  /** @param {boolean} isPrior */
  function setActive(isPrior) {
    state.priorActive = isPrior && Boolean(state.prior);
    mainWrap.classList.toggle('active', Boolean(state.prior) && !state.priorActive);
    state.prior?.panel.classList.toggle('active', state.priorActive);
    toolbar.renderPresets();
  }
  viewportEl.addEventListener('pointerdown', () => setActive(false));
  viewportEl.addEventListener('focus', () => setActive(false));

  // AI segmentation overlay controls.
  segToggle.addEventListener('change', () => segOverlay?.setVisible(segToggle.checked));
  segOpacity.addEventListener('input', () => segOverlay?.setOpacity(Number(segOpacity.value) / 100));
  if (__RDC_TEST_HOOKS__ && state.hook) {
    state.hook.segOverlayPixels = () => segOverlay?.drawnPixels() ?? 0;
    state.hook.segSliceIndices = () => segOverlay?.sliceIndices() ?? [];
  }

  async function attachSegmentations() {
    const { viewer } = state;
    if (!segments || !viewer) return;
    try {
      const list = await segments;
      if (state.disposed || !state.viewer) return;
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
      replace(segLabel, `AI SEG not shown: ${errorText(err)}`);
    }
  }

  function updateOverlay() {
    const { viewer } = state;
    if (!viewer) return;
    const { index, count } = viewer.position();
    replace(overlayPos, count ? `Im ${index + 1} / ${count}` : '');
    const wl = viewer.getWindow();
    replace(overlayWl, wl ? `W ${Math.round(wl.width)} L ${Math.round(wl.center)}` : '');
  }

  /**
   * @param {Study} study
   * @param {Series} series
   */
  async function showSeries(study, series) {
    replace(overlayStatus, 'Loading…');
    try {
      if (!state.viewer) {
        const viewer = await createStackViewer(viewportEl, {
          onRendered: () => {
            if (__RDC_TEST_HOOKS__ && state.hook) state.hook.renderedImageCount += 1;
            if (viewportEl.dataset.rendered !== 'true') {
              viewportEl.dataset.rendered = 'true';
              state.resolveReady(viewer.viewport);
            }
            updateOverlay();
          },
        });
        if (state.disposed) { viewer.destroy(); return; }
        state.viewer = viewer;
        if (__RDC_TEST_HOOKS__ && state.hook) {
          state.hook.getViewport = () => state.viewer?.viewport ?? null;
          state.hook.imageExtent = () => state.viewer?.imageExtent() ?? null;
        }
        toolbar.selectTool('windowLevel');
      }
      const imageIds = await loadSeriesImageIds(study.study_uid, series.series_uid, series.instances);
      if (state.disposed || !state.viewer) return;
      if (!imageIds.length) throw new Error('this series has no displayable images');
      viewportEl.dataset.seriesUid = series.series_uid;
      state.mainModality = String(series.modality ?? '');
      viewportEl.dataset.modality = state.mainModality;
      toolbar.renderPresets();
      await state.viewer.setStack(imageIds, Math.floor(imageIds.length / 2));
      replace(overlayStatus, '');
      updateOverlay();
      segOverlay?.refresh();
      if (!segOverlay) attachSegmentations();
      viewportEl.focus({ preventScroll: true });
    } catch (err) {
      console.warn('viewer: cannot show series', err);
      replace(overlayStatus, `Cannot display this series: ${errorText(err)}`);
    }
  }

  /**
   * A waveform is read on the ECG screen. `instead`: the study has nothing else to show,
   * so a cardiologist goes straight there (replacing this page in the history).
   * @param {Study} study
   * @param {boolean} instead
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
      if (state.disposed) return;
      if (ecgId === null) {
        replace(overlayStatus, 'This ECG has not been analysed yet: it will be on the ECG screen once it is.');
      } else if (instead) {
        window.location.replace(`#/ecg/${seg(ecgId)}`);
      } else {
        state.navigate(`#/ecg/${seg(ecgId)}`);
      }
    } catch (err) {
      replace(overlayStatus, `Cannot open the ECG: ${err instanceof ApiError ? err.message : err}`);
    }
  }

  return {
    el: viewportsBox,
    mainWrap,
    segControls,
    segToggleable: () => !segControls.hidden && !segToggle.disabled,
    toggleSeg() {
      segToggle.checked = !segToggle.checked;
      segOverlay?.setVisible(segToggle.checked);
    },
    setActive,
    showSeries,
    openEcg,
    setSegments(promise) {
      segments = promise;
      segments.catch(() => {}); // reported where it is awaited
    },
    setStatus: (text) => replace(overlayStatus, text),
    destroy() {
      segOverlay?.destroy();
      segOverlay = null;
    },
  };
}

/**
 * An error's message for the screen.
 * @param {unknown} err
 */
export function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
