// @ts-check
// The overlays a reader switches on and off over a slide: the QC gate's flags (blurred
// tiles, pen marks, missing tiles) and the AI heat map. Both are placed in the slide's
// own pixel coordinates, so OpenSeadragon moves and scales them with the image.
import OpenSeadragon from 'openseadragon';
import { heatmapRgba } from './slide_geometry.js';

const SVG = 'http://www.w3.org/2000/svg';

/**
 * An SVG whose user units are level-0 pixels of a `width` × `height` slide, stretched
 * over an element that OpenSeadragon keeps on the image.
 * @param {number} width
 * @param {number} height
 * @param {string} cls
 * @returns {{ box: HTMLDivElement, svg: SVGSVGElement }}
 */
export function slideSvg(width, height, cls) {
  const box = document.createElement('div');
  box.className = `slide-overlay ${cls}`;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('width', '100%');
  svg.setAttribute('height', '100%');
  box.append(svg);
  return { box, svg };
}

/**
 * An SVG element with attributes.
 * @param {string} tag
 * @param {Record<string, string | number>} attrs
 */
export function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/**
 * Put `box` over the whole slide in `viewer` (its image spans viewport x 0..1).
 * @param {any} viewer an OpenSeadragon viewer with the slide open
 * @param {HTMLElement} box
 * @param {number} width level-0 pixels
 * @param {number} height
 */
export function overlayWholeSlide(viewer, box, width, height) {
  viewer.addOverlay({ element: box, location: new OpenSeadragon.Rect(0, 0, 1, height / width) });
}

/**
 * The QC gate's flags as an overlay element (not placed yet): blurred tiles in amber,
 * pen marks outlined in blue, missing tiles in grey.
 * @param {{ blur_tiles?: number[][], pen_boxes?: number[][], missing?: number[][] }} qc
 * @param {number} width
 * @param {number} height
 */
export function qcOverlay(qc, width, height) {
  const { box, svg } = slideSvg(width, height, 'qc-overlay');
  box.dataset.testid = 'qc-overlay';
  /** @type {[string, number[][] | undefined][]} */
  const groups = [['qc-blur', qc.blur_tiles], ['qc-pen', qc.pen_boxes], ['qc-missing', qc.missing]];
  let n = 0;
  for (const [cls, boxes] of groups) {
    for (const b of boxes ?? []) {
      if (!Array.isArray(b) || b.length < 4) continue;
      svg.append(svgEl('rect', {
        class: cls, x: b[0], y: b[1], width: b[2], height: b[3], 'vector-effect': 'non-scaling-stroke',
      }));
      n += 1;
    }
  }
  box.dataset.boxes = String(n);
  return box;
}

/**
 * The AI heat map as a canvas of one pixel per cell, stretched over the cells' area of
 * the slide (pixelated), or null when the map is empty.
 * @param {{ rows?: number, cols?: number, cell_px?: number, values?: unknown[][] }} map
 * @returns {{ canvas: HTMLCanvasElement, widthPx: number, heightPx: number } | null}
 */
export function heatmapCanvas(map) {
  const rows = Number(map.rows) || 0;
  const cols = Number(map.cols) || 0;
  const cell = Number(map.cell_px) || 0;
  if (!rows || !cols || !cell) return null;
  const canvas = document.createElement('canvas');
  canvas.width = cols;
  canvas.height = rows;
  canvas.className = 'ai-heatmap';
  canvas.dataset.testid = 'ai-overlay';
  const ctx = canvas.getContext('2d');
  if (ctx) ctx.putImageData(new ImageData(heatmapRgba(map.values ?? [], rows, cols), cols, rows), 0, 0);
  return { canvas, widthPx: cols * cell, heightPx: rows * cell };
}

/**
 * Place the heat map's canvas over the slide: its cells start at the slide's origin.
 * @param {any} viewer
 * @param {{ canvas: HTMLCanvasElement, widthPx: number, heightPx: number }} map
 * @param {number} slideWidth level-0 pixels
 */
export function placeHeatmap(viewer, map, slideWidth) {
  viewer.addOverlay({
    element: map.canvas,
    location: new OpenSeadragon.Rect(0, 0, map.widthPx / slideWidth, map.heightPx / slideWidth),
  });
}
