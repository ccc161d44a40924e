// @ts-check
// Annotations on a slide: point, line (a calibrated measurement), polygon, free hand and
// a text note, drawn over OpenSeadragon in the slide's level-0 pixels. What is drawn
// stays "new" until the reader saves it; the server stores it as a DICOM Microscopy Bulk
// Simple Annotations instance and gives back every annotation of the slide, which is
// what reopening the case shows.
import OpenSeadragon from 'openseadragon';
import { clampPoint, measureText, thinStroke } from './slide_geometry.js';
import { overlayWholeSlide, slideSvg, svgEl } from './slide_overlays.js';

/** The annotation kinds the server stores (pathology/annotations.py). */
export const KINDS = ['point', 'line', 'polygon', 'freehand', 'text'];

/**
 * @typedef {{ kind: string, coords: number[][], text?: string, author?: string,
 *   created_at?: string }} Annotation
 */

/**
 * @typedef {object} AnnotationLayer
 * @property {(tool: string | null) => void} setTool
 * @property {() => string | null} tool
 * @property {(list: Annotation[]) => void} setSaved  what the server has
 * @property {() => Annotation[]} saved  what the server has (as last loaded)
 * @property {() => Annotation[]} pending  drawn and not saved yet
 * @property {() => void} clearPending
 * @property {(text: string) => void} setNoteText  the text the next note gets
 * @property {() => void} finishPolygon
 * @property {() => void} destroy
 */

/**
 * The annotation layer of one viewer (the slide already open in it).
 * @param {any} viewer OpenSeadragon viewer
 * @param {{ width: number, height: number, mpp?: number | null }} slide
 * @param {(layer: AnnotationLayer) => void} onChange after anything drawn or loaded
 * @returns {AnnotationLayer}
 */
export function createAnnotationLayer(viewer, slide, onChange) {
  const { width, height } = slide;
  const { box, svg } = slideSvg(width, height, 'annotation-overlay');
  box.dataset.testid = 'annotation-overlay';
  overlayWholeSlide(viewer, box, width, height);
  const input = document.createElement('div');
  input.className = 'annotation-input';
  input.dataset.testid = 'annotation-input';
  input.hidden = true;
  viewer.element.append(input);

  /** @type {Annotation[]} */
  let saved = [];
  /** @type {Annotation[]} */
  let drawn = [];
  /** @type {string | null} */
  let tool = null;
  /** @type {number[][]} */
  let draft = [];
  let dragging = false;
  let noteText = '';
  /** @type {HTMLElement[]} */
  let labels = [];

  /** @param {PointerEvent | MouseEvent} event */
  function toImage(event) {
    const rect = input.getBoundingClientRect();
    const p = viewer.viewport.viewerElementToImageCoordinates(
      new OpenSeadragon.Point(event.clientX - rect.left, event.clientY - rect.top));
    return clampPoint(p.x, p.y, width, height);
  }

  /** Screen pixels → level-0 pixels at the current zoom (to thin free-hand strokes). */
  function imagePxPerScreenPx() {
    const zoom = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
    return zoom > 0 ? 1 / zoom : 1;
  }

  /**
   * @param {Annotation} a
   * @param {string} state saved | new | draft
   */
  function shape(a, state) {
    const common = { class: `ann ann-${a.kind} ann-${state}`, 'vector-effect': 'non-scaling-stroke', 'data-testid': 'annotation-shape', 'data-kind': a.kind, 'data-state': state };
    const pts = a.coords.map((p) => `${p[0]},${p[1]}`).join(' ');
    if (a.kind === 'point' || a.kind === 'text' || a.coords.length === 1) {
      const [x, y] = a.coords[0];
      // A zero-length line with round caps: a dot of constant size at any zoom.
      return svgEl('line', { ...common, x1: x, y1: y, x2: x, y2: y });
    }
    if (a.kind === 'polygon' && state !== 'draft') return svgEl('polygon', { ...common, points: pts });
    return svgEl('polyline', { ...common, points: pts });
  }

  function render() {
    svg.replaceChildren(
      ...saved.map((a) => shape(a, 'saved')),
      ...drawn.map((a) => shape(a, 'new')),
      ...(draft.length ? [shape({ kind: tool === 'polygon' ? 'polygon' : tool === 'line' ? 'line' : 'freehand', coords: draft }, 'draft')] : []),
    );
    for (const el of labels) viewer.removeOverlay(el);
    labels = [];
    for (const [state, list] of /** @type {[string, Annotation[]][]} */ ([['saved', saved], ['new', drawn]])) {
      for (const a of list) {
        const label = a.kind === 'text' ? a.text ?? '' : a.kind === 'line' ? measureText(a, slide.mpp) : '';
        if (!label) continue;
        const el = document.createElement('div');
        el.className = `ann-label ann-${state}`;
        el.dataset.testid = 'annotation-label';
        el.textContent = label;
        const at = a.coords[a.coords.length - 1];
        viewer.addOverlay({
          element: el,
          location: viewer.viewport.imageToViewportCoordinates(new OpenSeadragon.Point(at[0], at[1])),
          placement: OpenSeadragon.Placement.TOP_LEFT,
          checkResize: false,
        });
        labels.push(el);
      }
    }
    box.dataset.saved = String(saved.length);
    box.dataset.new = String(drawn.length);
  }

  /** @param {Annotation} a */
  function add(a) {
    drawn = [...drawn, a];
    draft = [];
    render();
    onChange(layer);
  }

  input.addEventListener('pointerdown', (event) => {
    if (!tool || event.button !== 0) return;
    event.preventDefault();
    const p = toImage(event);
    if (tool === 'point') add({ kind: 'point', coords: [p] });
    else if (tool === 'text') {
      if (!noteText.trim()) {
        input.dispatchEvent(new CustomEvent('rdc:note-missing', { bubbles: true }));
        return;
      }
      add({ kind: 'text', coords: [p], text: noteText.trim() });
    } else if (tool === 'polygon') {
      draft = [...draft, p];
      render();
    } else {
      // line, freehand: press, drag, release
      dragging = true;
      input.setPointerCapture?.(event.pointerId);
      draft = [p, p];
      render();
    }
  });
  input.addEventListener('pointermove', (event) => {
    if (!dragging) return;
    const p = toImage(event);
    draft = tool === 'line' ? [draft[0], p] : [...draft, p];
    render();
  });
  input.addEventListener('pointerup', (event) => {
    if (!dragging) return;
    dragging = false;
    const p = toImage(event);
    const coords = tool === 'line' ? [draft[0], p] : thinStroke([...draft, p], 2 * imagePxPerScreenPx());
    const [a, b] = [coords[0], coords[coords.length - 1]];
    if (coords.length < 2 || (a[0] === b[0] && a[1] === b[1] && coords.length === 2)) {
      draft = [];
      render();
      return;
    }
    add({ kind: tool === 'line' ? 'line' : 'freehand', coords });
  });
  input.addEventListener('dblclick', (event) => {
    event.preventDefault();
    if (tool === 'polygon') finishPolygon();
  });

  function finishPolygon() {
    // A double click adds its two clicks' point twice: drop repeats.
    const pts = draft.filter((p, i) => i === 0 || p[0] !== draft[i - 1][0] || p[1] !== draft[i - 1][1]);
    if (pts.length >= 3) add({ kind: 'polygon', coords: pts });
    else {
      draft = [];
      render();
    }
  }

  const redraw = () => { if (labels.length) render(); };
  viewer.addHandler('resize', redraw);

  /** @type {AnnotationLayer} */
  const layer = {
    setTool(next) {
      tool = next && KINDS.includes(next) ? next : null;
      draft = [];
      dragging = false;
      input.hidden = !tool;
      input.dataset.tool = tool ?? '';
      render();
    },
    tool: () => tool,
    setSaved(list) {
      saved = Array.isArray(list) ? list : [];
      render();
      onChange(layer);
    },
    saved: () => saved,
    pending: () => drawn,
    clearPending() {
      drawn = [];
      render();
      onChange(layer);
    },
    setNoteText(text) {
      noteText = text;
    },
    finishPolygon,
    destroy() {
      viewer.removeHandler('resize', redraw);
      input.remove();
    },
  };
  render();
  return layer;
}
