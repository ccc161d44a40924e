// @ts-check
// A whole-slide image's geometry, apart from OpenSeadragon and the DOM so that it is
// unit-tested (frontend/tests/pathology_geometry.test.js): which OpenSeadragon level is
// which server pyramid level, tile URLs, calibrated lengths and areas in µm from the
// slide's pixel spacing, the scale bar's nice length, and how a free-hand stroke is
// thinned before it is stored.

/**
 * One level of a slide's pyramid as GET /api/pathology/slides/{id}/pyramid answers it:
 * level 0 is full resolution.
 * @typedef {{ level: number, width: number, height: number, downsample: number,
 *   tiles_x?: number, tiles_y?: number }} PyramidLevel
 */
/**
 * @typedef {{ width: number, height: number, tile_width: number, tile_height: number,
 *   mpp?: number | null, levels: PyramidLevel[] }} Pyramid
 */
/**
 * An OpenSeadragon level (0 = lowest resolution, counting up) and the server level
 * (0 = full resolution) it shows; `scale` is the level's size over the full size.
 * @typedef {{ osdLevel: number, serverLevel: number, scale: number, width: number,
 *   height: number }} OsdLevel
 */

/**
 * OpenSeadragon's levels for a server pyramid. OpenSeadragon counts levels up from the
 * lowest resolution and assumes each is twice the one below; a DICOM WSI pyramid
 * counts down from full resolution and may step by 4, or lack a level. So only the
 * levels the server has become OpenSeadragon levels, in order, each with its real scale
 * (the tile source's getLevelScale answers it): OpenSeadragon then never asks for a
 * level the server does not have. Levels whose size is unusable (0, or larger than
 * level 0) are dropped; two levels of one scale keep the first.
 * @param {Pyramid} pyramid
 * @returns {OsdLevel[]}
 */
export function osdLevels(pyramid) {
  const full = Math.max(1, Number(pyramid.width) || 0);
  const fullH = Math.max(1, Number(pyramid.height) || 0);
  /** @type {Map<number, PyramidLevel>} */
  const byScale = new Map();
  for (const level of pyramid.levels ?? []) {
    const width = Number(level.width) || (level.downsample ? full / level.downsample : 0);
    if (!(width > 0) || width > full * 1.001) continue;
    const scale = Math.round((width / full) * 1e9) / 1e9;
    if (!byScale.has(scale)) byScale.set(scale, level);
  }
  return [...byScale.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([scale, level], osdLevel) => ({
      osdLevel,
      serverLevel: level.level,
      scale,
      width: Number(level.width) || Math.ceil(full * scale),
      height: Number(level.height) || Math.ceil(fullH * scale),
    }));
}

/**
 * The proxied tile of a slide (the web app checks the session and the site; Orthanc is
 * never reached from the browser).
 * @param {number | string} slideId
 * @param {number} serverLevel 0 = full resolution
 * @param {number} x column
 * @param {number} y row
 */
export function tileUrl(slideId, serverLevel, x, y) {
  const seg = (/** @type {unknown} */ v) => encodeURIComponent(String(v));
  return `/api/pathology/slides/${seg(slideId)}/tiles/${seg(serverLevel)}/${seg(x)}/${seg(y)}`;
}

/**
 * The length between two points (level-0 pixels) in µm, or null when the slide has no
 * pixel spacing (then only pixels can be given).
 * @param {number[]} a [x, y]
 * @param {number[]} b [x, y]
 * @param {number | null | undefined} mpp µm per level-0 pixel
 */
export function lengthUm(a, b, mpp) {
  if (!mpp || !(mpp > 0)) return null;
  return Math.hypot(b[0] - a[0], b[1] - a[1]) * mpp;
}

/**
 * A polyline's length (level-0 pixels → µm); null without pixel spacing.
 * @param {number[][]} points
 * @param {number | null | undefined} mpp
 */
export function pathLengthUm(points, mpp) {
  if (!mpp || !(mpp > 0)) return null;
  let total = 0;
  for (let i = 1; i < points.length; i += 1) total += Math.hypot(points[i][0] - points[i - 1][0], points[i][1] - points[i - 1][1]);
  return total * mpp;
}

/**
 * A closed polygon's area in µm² (shoelace formula); null without pixel spacing.
 * @param {number[][]} points level-0 pixels
 * @param {number | null | undefined} mpp
 */
export function polygonAreaUm2(points, mpp) {
  if (!mpp || !(mpp > 0) || points.length < 3) return null;
  let twice = 0;
  for (let i = 0; i < points.length; i += 1) {
    const [x1, y1] = points[i];
    const [x2, y2] = points[(i + 1) % points.length];
    twice += x1 * y2 - x2 * y1;
  }
  return (Math.abs(twice) / 2) * mpp * mpp;
}

/**
 * A length for the reader: µm below 1 mm, mm above ("250 µm", "1.25 mm").
 * @param {number | null} um
 */
export function formatLength(um) {
  if (um === null || !Number.isFinite(um)) return '';
  if (um >= 1000) return `${trim(um / 1000)} mm`;
  return `${trim(um)} µm`;
}

/**
 * An area for the reader: µm² below 0.01 mm², mm² above.
 * @param {number | null} um2
 */
export function formatArea(um2) {
  if (um2 === null || !Number.isFinite(um2)) return '';
  if (um2 >= 10_000) return `${trim(um2 / 1e6)} mm²`;
  return `${trim(um2)} µm²`;
}

/** @param {number} v three significant digits at most, no trailing zeros */
function trim(v) {
  if (v === 0) return '0';
  const digits = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(v))));
  return String(Number(v.toFixed(Math.min(digits, 3))));
}

/**
 * The scale bar: the longest "nice" length (1, 2 or 5 × a power of ten, in µm) that
 * fits in `maxPx` screen pixels at `umPerScreenPx`; its width in pixels and its label.
 * Null when the slide has no pixel spacing.
 * @param {number | null} umPerScreenPx
 * @param {number} maxPx
 * @returns {{ um: number, px: number, label: string } | null}
 */
export function scaleBar(umPerScreenPx, maxPx = 120) {
  if (!umPerScreenPx || !(umPerScreenPx > 0) || !(maxPx > 0)) return null;
  const maxUm = umPerScreenPx * maxPx;
  const power = 10 ** Math.floor(Math.log10(maxUm));
  const nice = [5, 2, 1].map((m) => m * power).find((v) => v <= maxUm) ?? power;
  return { um: nice, px: nice / umPerScreenPx, label: formatLength(nice) };
}

/**
 * A free-hand stroke thinned for storage: a point closer than `minPx` (level-0 pixels)
 * to the last one kept is dropped, and the last point is always kept.
 * @param {number[][]} points
 * @param {number} minPx
 */
export function thinStroke(points, minPx) {
  if (points.length <= 2) return points.map((p) => [p[0], p[1]]);
  const kept = [[points[0][0], points[0][1]]];
  for (let i = 1; i < points.length - 1; i += 1) {
    const last = kept[kept.length - 1];
    if (Math.hypot(points[i][0] - last[0], points[i][1] - last[1]) >= minPx) kept.push([points[i][0], points[i][1]]);
  }
  const end = points[points.length - 1];
  kept.push([end[0], end[1]]);
  return kept;
}

/**
 * A point clamped into the slide (level-0 pixels, rounded to 0.1 px): clicks just off
 * the edge become edge points, which the server accepts (it refuses points outside).
 * @param {number} x
 * @param {number} y
 * @param {number} width
 * @param {number} height
 */
export function clampPoint(x, y, width, height) {
  const c = (/** @type {number} */ v, /** @type {number} */ max) => Math.round(Math.min(Math.max(v, 0), max) * 10) / 10;
  return [c(x, width - 1), c(y, height - 1)];
}

/**
 * Each cell of an AI heat map as a colour, row by row (RGBA bytes for an ImageData of
 * cols × rows): a probability 0..1 of the first label goes from transparent to red.
 * @param {unknown[][]} values rows × cols, 0..1 (or a list of 0..1 per label)
 * @param {number} rows
 * @param {number} cols
 * @param {number} [alpha] the opacity at 1.0 (0..255)
 */
export function heatmapRgba(values, rows, cols, alpha = 170) {
  const out = new Uint8ClampedArray(rows * cols * 4);
  for (let r = 0; r < rows; r += 1) {
    for (let c = 0; c < cols; c += 1) {
      const cell = values?.[r]?.[c];
      // One probability per cell, or one per label (then the strongest).
      const raw = Array.isArray(cell) ? Math.max(0, ...cell.map(Number).filter(Number.isFinite)) : Number(cell);
      const v = Number.isFinite(raw) ? Math.min(Math.max(raw, 0), 1) : 0;
      const i = (r * cols + c) * 4;
      out[i] = 255;
      out[i + 1] = Math.round(200 * (1 - v));
      out[i + 2] = 0;
      out[i + 3] = Math.round(alpha * v);
    }
  }
  return out;
}

/**
 * The OpenSeadragon tile source of a slide: only the levels the server has
 * (slide_geometry.js osdLevels), each with its real scale, each tile from the proxy.
 * @param {number | string} slideId
 * @param {Pyramid} pyramid
 * @param {OsdLevel[]} levels
 */
export function tileSourceOf(slideId, pyramid, levels) {
  return {
    width: pyramid.width,
    height: pyramid.height,
    tileWidth: pyramid.tile_width,
    tileHeight: pyramid.tile_height,
    tileOverlap: 0,
    minLevel: 0,
    maxLevel: levels.length - 1,
    /** @param {number} level */
    getLevelScale(level) {
      return levels[level]?.scale ?? NaN;
    },
    /** @param {number} level @param {number} x @param {number} y */
    getTileUrl(level, x, y) {
      return tileUrl(slideId, levels[level]?.serverLevel ?? 0, x, y);
    },
  };
}

/**
 * What an annotation measures, for the list: a line's length, a polygon's area, a free
 * hand stroke's length; '' when the slide has no pixel spacing.
 * @param {{ kind: string, coords: number[][] }} a
 * @param {number | null | undefined} mpp
 */
export function measureText(a, mpp) {
  if (a.kind === 'line') return formatLength(pathLengthUm(a.coords, mpp));
  if (a.kind === 'polygon') return formatArea(polygonAreaUm2(a.coords, mpp));
  if (a.kind === 'freehand') return formatLength(pathLengthUm(a.coords, mpp));
  return '';
}
