// @ts-check
// What the study page's parts share: the study's id, the viewers on screen, whether the
// toolbar acts on the prior, the disposers run when the page goes, and (in test builds
// only) the browser tests' hook. Plus the small pure helpers the parts have in common.
import { WAVEFORM_MODALITIES } from '../../api.js';

/** @typedef {Awaited<ReturnType<typeof import('../../viewer/cornerstone.js').createStackViewer>>} StackViewer */
/** @typedef {ReturnType<typeof import('../../viewer/segOverlay.js').createSegOverlay>} SegOverlay */

/**
 * A series of a study as /api/studies/<id> lists it (instances: SOP instance UIDs in order).
 * @typedef {{ series_uid: string, modality?: string | null, number?: number | null,
 *   description?: string | null, kind?: string | null, instances?: string[] }} Series
 */

/**
 * A prior of a study (an item of study.priors).
 * @typedef {{ study_id: string | number, match?: string | null, site_id?: string | null,
 *   site_name?: string | null, date?: string | null, description?: string | null }} Prior
 */

/**
 * An AI finding of a study (an item of study.ai_findings).
 * @typedef {{ id: string | number, label?: string | null, critical?: boolean,
 *   positive?: boolean | null, review?: string | null, probability?: number | null,
 *   threshold?: number | null, volume_ml?: number | null, model?: string | null,
 *   version?: string | null }} Finding
 */

/**
 * A study as /api/studies/<id> answers it (the fields the study page reads).
 * @typedef {{ study_id: string | number, study_uid: string, patient_name?: unknown,
 *   patient_id?: string | null, description?: string | null, study_date?: string | null,
 *   modalities?: string[], site_id?: string | null, site_name?: string | null,
 *   status?: string, claimed_by?: string | null, seconds_left?: number | null,
 *   due_at?: string | null, ai_critical?: boolean, series?: Series[], priors?: Prior[],
 *   ai_findings?: Finding[], [key: string]: unknown }} Study
 */

/**
 * The prior shown side by side: its viewer (once created), its panel and the modality of
 * the series it shows.
 * @typedef {{ viewer: StackViewer | null, panel: HTMLElement, studyId: string | number,
 *   modality: string }} PriorView
 */

/**
 * @typedef {object} StudyState
 * @property {string} studyId
 * @property {(hash: string) => void} navigate
 * @property {boolean} disposed  the page is gone: pending work stops where it checks this
 * @property {(() => void)[]} disposers  run in order when the page goes
 * @property {StackViewer | null} viewer  the main viewport's viewer, once created
 * @property {PriorView | null} prior  the prior shown side by side, if any
 * @property {boolean} priorActive  the toolbar and keys act on the prior viewport
 * @property {string} mainModality  the modality of the series in the main viewport
 * @property {RdcTestHook | null} hook  the browser tests' hook (test builds only)
 * @property {(viewport: unknown) => void} resolveReady  resolves hook.viewportReady
 * @property {(text: string) => void} showError  the page's error line ('' hides it)
 */

/**
 * A fresh state for the study page of `studyId`.
 * @param {string} studyId
 * @param {(hash: string) => void} navigate
 * @returns {StudyState}
 */
export function createStudyState(studyId, navigate) {
  /** @type {StudyState} */
  const state = {
    studyId,
    navigate,
    disposed: false,
    disposers: [],
    viewer: null,
    prior: null,
    priorActive: false,
    mainModality: '',
    hook: null,
    resolveReady: () => {},
    showError: () => {},
  };
  if (__RDC_TEST_HOOKS__) {
    const { hook, resolveReady } = createStudyHook();
    window.__rdc = hook;
    state.hook = hook;
    state.resolveReady = resolveReady;
  }
  return state;
}

/**
 * The viewer the toolbar and keys act on: the prior's once it was clicked or focused.
 * @param {StudyState} state
 * @returns {StackViewer | null}
 */
export function activeViewer(state) {
  return state.priorActive && state.prior?.viewer ? state.prior.viewer : state.viewer;
}

/** @param {unknown} v  a path segment of a URL */
export function seg(v) {
  return encodeURIComponent(String(v));
}

/**
 * A waveform (ECG) series: read on the ECG screen, never in the image viewer.
 * @param {Series | null | undefined} series
 */
export function isWaveform(series) {
  return WAVEFORM_MODALITIES.includes(String(series?.modality ?? '').toUpperCase());
}

/**
 * A series the image viewer shows: images (not SEG, SR...), not a waveform, not empty.
 * @param {Series} series
 */
export function isImageSeries(series) {
  return (series.kind ?? 'image') === 'image' && !isWaveform(series) && (series.instances ?? []).length > 0;
}

/**
 * The series in series-number order (unnumbered first), without changing `series`.
 * @param {Series[] | null | undefined} series
 * @returns {Series[]}
 */
export function sortSeries(series) {
  return [...(series ?? [])].sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
}

/**
 * Pixels of the first canvas under `selector` that are not black: > 0 once an image shows.
 * @param {string} selector
 */
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

/**
 * A fresh test hook for this viewer (see the front end's README section); test builds only.
 * @returns {{ hook: RdcTestHook, resolveReady: (viewport: unknown) => void }}
 */
function createStudyHook() {
  /** @type {(viewport: unknown) => void} */
  let resolveReady = () => {};
  /** @type {Promise<unknown>} */
  const ready = new Promise((resolve) => { resolveReady = resolve; });
  /** @type {RdcTestHook} */
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
  return { hook, resolveReady };
}
