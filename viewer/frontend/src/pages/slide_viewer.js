// @ts-check
// One slide in OpenSeadragon: deep zoom over the slide's DICOM WSI tiles, which come
// through the web app's authenticated, site-checked proxy (same origin, the session
// cookie; Orthanc is never reached from the browser). Also the scale bar, the QC and AI
// overlays, and the annotation layer of that slide.
import OpenSeadragon from 'openseadragon';
import { ApiError, api } from '../api.js';
import { h } from '../dom.js';
import { createAnnotationLayer } from './slide_annotations.js';
import { heatmapCanvas, overlayWholeSlide, placeHeatmap, qcOverlay } from './slide_overlays.js';
import { osdLevels, scaleBar, tileSourceOf } from './slide_geometry.js';

/** @typedef {import('./slide_geometry.js').Pyramid} Pyramid */
/** @typedef {import('./slide_annotations.js').AnnotationLayer} AnnotationLayer */

/**
 * A slide as the case detail gives it (SlideOut).
 * @typedef {{ id: number, width: number, height: number, mpp?: number | null, stain?: string,
 *   part?: string, block?: string, label?: string, qc_grade?: string, has_heatmap?: boolean,
 *   has_label_image?: boolean, qc_reasons?: string[] }} Slide
 */

/**
 * @typedef {object} SlideView
 * @property {Slide} slide
 * @property {any} viewer the OpenSeadragon viewer
 * @property {Promise<SlideView>} ready resolves once the pyramid is known and the slide open
 * @property {() => boolean} opened the slide is open (until then its viewport is not where it will be)
 * @property {() => boolean} fullyLoaded every tile needed for the current view has arrived
 * @property {(serverLevel: number) => Promise<void>} zoomTo shows a server level 1:1, resolves when loaded
 * @property {(x: number, y: number) => void} panToElement centres the view on a point of the
 *   viewer's element (CSS pixels from its top left)
 * @property {(on: boolean) => Promise<void>} showQc
 * @property {(on: boolean) => Promise<void>} showAi
 * @property {() => AnnotationLayer | null} annotations
 * @property {() => void} destroy
 */

/**
 * OpenSeadragon injects an inline <style> (no focus outline on touch screens) unless a
 * `style[data-openseadragon-mobile-css]` is there. The app's Content-Security-Policy
 * allows no inline style element, not even an empty one, so the marker is an element
 * named style in a namespace of its own: the selector finds it, and the browser never
 * treats it as a style sheet. The rule itself is in styles.css.
 */
function preemptInlineStyle() {
  if (document.querySelector('style[data-openseadragon-mobile-css]')) return;
  const marker = document.createElementNS('urn:rdc:marker', 'style');
  marker.setAttribute('data-openseadragon-mobile-css', 'true');
  document.head.append(marker);
}

/**
 * Open `slide` in `container`. `onActivate` is called when the reader works in this view
 * (the tools act on the active one); `onViewChange` after each pan or zoom (to keep a
 * side-by-side partner in step).
 * @param {HTMLElement} container
 * @param {Slide} slide
 * @param {{ onActivate?: (view: SlideView) => void, onViewChange?: (view: SlideView) => void,
 *   onAnnotations?: (layer: AnnotationLayer) => void }} [hooks]
 * @returns {SlideView}
 */
export function createSlideView(container, slide, hooks = {}) {
  const host = h('div', { class: 'osd-host', testid: 'slide-viewer', dataset: { slideId: String(slide.id) } });
  const bar = h('div', { class: 'scale-bar-line' });
  const barLabel = h('span', { class: 'scale-bar-label', testid: 'scale-bar-label' });
  const scale = h('div', { class: 'scale-bar', testid: 'scale-bar' }, bar, barLabel);
  const zoomLabel = h('span', { class: 'zoom-label', testid: 'zoom-label' });
  const error = h('p', { class: 'error', role: 'alert', testid: 'slide-viewer-error', hidden: true });
  container.append(host, scale, zoomLabel, error);

  /** @type {any} */
  let viewer = null;
  /** @type {AnnotationLayer | null} */
  let layer = null;
  /** @type {HTMLElement | null} */
  let qcBox = null;
  /** @type {HTMLCanvasElement | null} */
  let aiCanvas = null;
  let destroyed = false;
  let isOpen = false;
  /** @type {Pyramid | null} */
  let pyramid = null;

  function umPerScreenPx() {
    if (!viewer || !slide.mpp) return null;
    const zoom = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
    return zoom > 0 ? slide.mpp / zoom : null;
  }

  function updateScale() {
    const um = umPerScreenPx();
    const s = scaleBar(um, 140);
    scale.hidden = !s;
    if (s) {
      bar.style.width = `${Math.round(s.px)}px`;
      barLabel.textContent = s.label;
      scale.dataset.um = String(s.um);
      scale.dataset.px = String(s.px);
    }
    if (viewer) {
      const zoom = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
      zoomLabel.textContent = zoom >= 1 ? `${zoom.toFixed(1)}×` : `1:${(1 / zoom).toFixed(zoom < 0.1 ? 0 : 1)}`;
    }
  }

  /** @type {SlideView} */
  const view = {
    slide,
    get viewer() { return viewer; },
    ready: Promise.resolve(/** @type {any} */ (null)),
    opened: () => isOpen && !destroyed,
    fullyLoaded: () => Boolean(viewer?.world.getItemAt(0)?.getFullyLoaded()),
    async zoomTo(serverLevel) {
      await view.ready;
      const level = pyramid?.levels.find((l) => l.level === serverLevel);
      if (!viewer || !level) throw new Error(`slide ${slide.id} has no level ${serverLevel}`);
      const downsample = Number(level.downsample) || (pyramid ? pyramid.width / level.width : 1);
      viewer.viewport.zoomTo(viewer.viewport.imageToViewportZoom(1 / downsample), null, true);
      updateScale();
      await whenLoaded();
    },
    panToElement(x, y) {
      if (!viewer) return;
      viewer.viewport.panTo(viewer.viewport.viewerElementToViewportCoordinates(new OpenSeadragon.Point(x, y)), true);
    },
    async showQc(on) {
      await view.ready;
      if (!on) {
        if (qcBox) viewer.removeOverlay(qcBox);
        qcBox = null;
        return;
      }
      const data = await api('GET', `/api/pathology/slides/${encodeURIComponent(slide.id)}/overlays/qc`);
      if (destroyed || qcBox) return;
      qcBox = qcOverlay(data ?? {}, slide.width, slide.height);
      overlayWholeSlide(viewer, qcBox, slide.width, slide.height);
    },
    async showAi(on) {
      await view.ready;
      if (!on) {
        if (aiCanvas) viewer.removeOverlay(aiCanvas);
        aiCanvas = null;
        return;
      }
      const data = await api('GET', `/api/pathology/slides/${encodeURIComponent(slide.id)}/overlays/ai`);
      if (destroyed || aiCanvas) return;
      const map = heatmapCanvas(data ?? {});
      if (!map) throw new ApiError(404, 'The AI heat map is empty.');
      aiCanvas = map.canvas;
      placeHeatmap(viewer, map, slide.width);
    },
    annotations: () => layer,
    destroy() {
      destroyed = true;
      layer?.destroy();
      viewer?.destroy();
      viewer = null;
    },
  };

  function whenLoaded() {
    return new Promise((resolve) => {
      const item = viewer?.world.getItemAt(0);
      if (!item || item.getFullyLoaded()) {
        resolve(undefined);
        return;
      }
      item.whenFullyLoaded(() => resolve(undefined));
    });
  }

  view.ready = (async () => {
    try {
      pyramid = /** @type {Pyramid} */ (await api('GET', `/api/pathology/slides/${encodeURIComponent(slide.id)}/pyramid`));
      if (destroyed) return view;
      const levels = osdLevels(pyramid);
      if (!levels.length) throw new Error('the slide has no usable pyramid level');
      preemptInlineStyle();
      viewer = OpenSeadragon({
        element: host,
        // The canvas drawer: WebGL gains little for JPEG tiles and is software-emulated
        // on machines without a GPU.
        drawer: 'canvas',
        tileSources: /** @type {any} */ (tileSourceOf(slide.id, pyramid, levels)),
        showNavigationControl: false,
        showNavigator: false,
        crossOriginPolicy: false,
        maxZoomPixelRatio: 2,
        visibilityRatio: 0.5,
        gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
        preserveImageSizeOnResize: true,
      });
      await new Promise((resolve, reject) => {
        viewer.addOnceHandler('open', resolve);
        viewer.addOnceHandler('open-failed', (/** @type {any} */ e) => reject(new Error(e?.message ?? 'the slide did not open')));
      });
      if (destroyed) return view;
      for (const name of ['animation', 'zoom', 'pan', 'resize', 'open']) viewer.addHandler(name, updateScale);
      // Zoom and pan events come when the reader (or a partner's sync) moves the view;
      // 'animation' also comes while tiles fade in, and would move partners back.
      viewer.addHandler('zoom', () => hooks.onViewChange?.(view));
      viewer.addHandler('pan', () => hooks.onViewChange?.(view));
      host.addEventListener('pointerdown', () => hooks.onActivate?.(view), { capture: true });
      layer = createAnnotationLayer(viewer, slide, (l) => hooks.onAnnotations?.(l));
      updateScale();
      isOpen = true;
      host.dataset.open = 'true';
      return view;
    } catch (err) {
      error.textContent = `Slide ${slide.id}: ${err instanceof Error ? err.message : String(err)}`;
      error.hidden = false;
      throw err;
    }
  })();
  view.ready.catch(() => {}); // shown in the view; callers that await it see it too
  return view;
}

/**
 * Keep side-by-side views in step: a pan or zoom of one moves the others to the same
 * place and magnification (viewport coordinates: each slide spans 0..1 across). Views
 * not open yet take no part: a slide that opens goes to its home view first, which must
 * not move its partner (the page moves the newcomer to its partner once it is open).
 * @param {() => SlideView[]} views  the views shown now
 * @param {() => boolean} enabled
 * @returns {(source: SlideView) => void} the onViewChange hook
 */
export function synchroniser(views, enabled) {
  let syncing = false;
  return (source) => {
    if (syncing || !enabled() || !source.opened()) return;
    syncing = true;
    try {
      const center = source.viewer.viewport.getCenter(false);
      const zoom = source.viewer.viewport.getZoom(false);
      for (const other of views()) {
        if (other === source || !other.opened()) continue;
        other.viewer.viewport.zoomTo(zoom, null, true);
        other.viewer.viewport.panTo(center, true);
      }
    } finally {
      syncing = false;
    }
  };
}
