// @ts-check
// AI segmentations (DICOM SEG, as highdicom writes them) drawn over a StackViewport.
//
// No labelmap machinery: the SEG instance's DICOM JSON metadata and its frames come
// through the DICOMweb proxy, each frame is unpacked (1 bit per pixel for BINARY) and
// mapped to its CT slice by the referenced SOP instance UID (Per-frame Functional Groups
// → Derivation Image → Source Image), or else by Image Position (Patient).  The mask of
// the slice on screen is drawn on a canvas laid over the viewport, through the same
// image → world → canvas transform Cornerstone uses, so it follows zoom, pan and flips.
import { Enums, metaData, utilities } from '@cornerstonejs/core';

import { DICOMWEB_BASE } from './cornerstone.js';

// Display colours (RGB) for segment numbers 1, 2, ...
const PALETTE = [[255, 64, 64], [64, 200, 255], [255, 200, 0], [120, 255, 120], [255, 90, 255]];

const T = {
  sop: '00080018',
  rows: '00280010',
  columns: '00280011',
  frames: '00280008',
  bitsAllocated: '00280100',
  segmentationType: '00620001',
  segmentSequence: '00620002',
  segmentNumber: '00620004',
  segmentLabel: '00620005',
  sharedGroups: '52009229',
  perFrameGroups: '52009230',
  derivationImage: '00089124',
  sourceImage: '00082112',
  referencedSop: '00081155',
  planePosition: '00209113',
  imagePosition: '00200032',
  segmentIdentification: '0062000A',
  referencedSegment: '0062000B',
  maxFractional: '00620010',
};

function enc(value) {
  return encodeURIComponent(String(value));
}

function values(item, tag) {
  return item?.[tag]?.Value ?? [];
}

function first(item, tag) {
  return values(item, tag)[0];
}

/** The first value of `path` (tags, through sequences) in the frame's group, else the shared one. */
function groupValue(frameGroup, sharedGroup, path) {
  for (const start of [frameGroup, sharedGroup]) {
    let items = start ? [start] : [];
    for (const tag of path.slice(0, -1)) items = items.flatMap((it) => values(it, tag));
    for (const it of items) {
      const v = values(it, path[path.length - 1]);
      if (v.length) return v;
    }
  }
  return [];
}

function indexOf(haystack, needle, from = 0) {
  outer: for (let i = from; i <= haystack.length - needle.length; i += 1) {
    for (let j = 0; j < needle.length; j += 1) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** The first part's body of a multipart/related answer (or the whole body if not multipart). */
function firstPart(bytes, contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType || '');
  if (!m || !/^multipart\//i.test(contentType)) return bytes;
  const boundary = new TextEncoder().encode(`--${m[1]}`);
  const start = indexOf(bytes, boundary);
  if (start < 0) return bytes;
  const headersEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), start + boundary.length);
  if (headersEnd < 0) return bytes;
  const bodyStart = headersEnd + 4;
  const next = indexOf(bytes, new TextEncoder().encode(`\r\n--${m[1]}`), bodyStart);
  return bytes.subarray(bodyStart, next < 0 ? bytes.length : next);
}

async function getJson(url) {
  const response = await fetch(url, {
    credentials: 'same-origin', headers: { Accept: 'application/dicom+json, application/json' },
  });
  if (!response.ok) throw new Error(`SEG metadata: HTTP ${response.status}`);
  return response.json();
}

async function getFrame(url) {
  const response = await fetch(url, {
    credentials: 'same-origin',
    headers: { Accept: 'multipart/related; type="application/octet-stream"' },
  });
  if (!response.ok) throw new Error(`SEG frame: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  return firstPart(bytes, response.headers.get('content-type'));
}

/** One frame's pixels as 0/1 bytes, from 1-bit packed (DICOM: LSB first) or 8/16-bit data. */
function unpack(data, rows, cols, bitsAllocated, threshold) {
  const n = rows * cols;
  const mask = new Uint8Array(n);
  if (bitsAllocated === 1 && data.length < n) {
    for (let i = 0; i < n; i += 1) mask[i] = (data[i >> 3] >> (i & 7)) & 1;
  } else if (bitsAllocated === 16) {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n && 2 * i + 1 < data.length; i += 1) mask[i] = view.getUint16(2 * i, true) >= threshold ? 1 : 0;
  } else {
    for (let i = 0; i < n && i < data.length; i += 1) mask[i] = data[i] >= threshold ? 1 : 0;
  }
  return mask;
}

async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next;
      next += 1;
      out[i] = await fn(items[i], i);
    }
  });
  await Promise.all(workers);
  return out;
}

/**
 * Load every SEG instance of `segSeries` ([{series_uid, instances}]) of the study.
 * Returns [{label, color, rows, cols, frames: [{refSop, position, mask}]}], one per segment.
 */
export async function loadSegmentations(studyUid, segSeries) {
  const out = [];
  for (const series of segSeries) {
    for (const sop of series.instances ?? []) {
      const base = `${window.location.origin}${DICOMWEB_BASE}/studies/${enc(studyUid)}/series/`
        + `${enc(series.series_uid)}/instances/${enc(sop)}`;
      const [meta] = await getJson(`${base}/metadata`);
      if (!meta) continue;
      const rows = Number(first(meta, T.rows));
      const cols = Number(first(meta, T.columns));
      const count = Number(first(meta, T.frames)) || 1;
      const bits = Number(first(meta, T.bitsAllocated)) || 1;
      const fractional = String(first(meta, T.segmentationType) ?? 'BINARY').toUpperCase() === 'FRACTIONAL';
      const threshold = fractional ? Math.max(1, Math.ceil((Number(first(meta, T.maxFractional)) || 255) / 2)) : 1;
      const shared = values(meta, T.sharedGroups)[0];
      const perFrame = values(meta, T.perFrameGroups);
      const segments = new Map();
      values(meta, T.segmentSequence).forEach((s, i) => {
        const number = Number(first(s, T.segmentNumber)) || i + 1;
        segments.set(number, {
          label: String(first(s, T.segmentLabel) ?? `segment ${number}`),
          color: PALETTE[(number - 1) % PALETTE.length],
          rows, cols, frames: [],
        });
      });
      const frameNumbers = Array.from({ length: count }, (_, i) => i + 1);
      const masks = await mapLimit(frameNumbers, 6, async (n) => unpack(
        await getFrame(`${base}/frames/${n}`), rows, cols, bits, threshold));
      frameNumbers.forEach((n, i) => {
        const group = perFrame[i];
        const number = Number(groupValue(group, shared, [T.segmentIdentification, T.referencedSegment])[0]) || 1;
        if (!segments.has(number)) {
          segments.set(number, { label: `segment ${number}`, color: PALETTE[(number - 1) % PALETTE.length], rows, cols, frames: [] });
        }
        segments.get(number).frames.push({
          refSop: groupValue(group, shared, [T.derivationImage, T.sourceImage, T.referencedSop])[0] ?? null,
          position: groupValue(group, shared, [T.planePosition, T.imagePosition]).map(Number),
          mask: masks[i],
        });
      });
      out.push(...segments.values());
    }
  }
  return out;
}

function sopOfImageId(imageId) {
  const m = /\/instances\/([^/]+)\/frames\/\d+/.exec(imageId);
  return m ? decodeURIComponent(m[1]) : null;
}

/**
 * An overlay canvas over `element`'s viewport (placed by the caller in the same box).
 * setStack(imageIds) maps the loaded segments to the stack's slices; draw() follows renders.
 */
export function createSegOverlay(element, viewport, canvas) {
  let segments = [];
  let bySlice = new Map(); // imageId -> [{mask, rows, cols, color, bitmap}]
  let visible = true;
  let opacity = 0.5;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });

  function bitmapOf(entry) {
    if (entry.bitmap) return entry.bitmap;
    const off = document.createElement('canvas');
    off.width = entry.cols;
    off.height = entry.rows;
    const octx = off.getContext('2d');
    const img = octx.createImageData(entry.cols, entry.rows);
    const [r, g, b] = entry.color;
    for (let i = 0; i < entry.mask.length; i += 1) {
      if (!entry.mask[i]) continue;
      img.data[4 * i] = r;
      img.data[4 * i + 1] = g;
      img.data[4 * i + 2] = b;
      img.data[4 * i + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    entry.bitmap = off;
    return off;
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(element.clientWidth * dpr);
    const height = Math.round(element.clientHeight * dpr);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!visible || !bySlice.size) return;
    const imageId = viewport.getCurrentImageId?.();
    const entries = imageId ? bySlice.get(imageId) : null;
    if (!entries?.length) return;
    const plane = metaData.get('imagePlaneModule', imageId);
    const rows = Number(plane?.rows) || entries[0].rows;
    const cols = Number(plane?.columns) || entries[0].cols;
    let o;
    let x;
    let y;
    try {
      o = viewport.worldToCanvas(utilities.imageToWorldCoords(imageId, [0, 0]));
      x = viewport.worldToCanvas(utilities.imageToWorldCoords(imageId, [cols, 0]));
      y = viewport.worldToCanvas(utilities.imageToWorldCoords(imageId, [0, rows]));
    } catch (err) {
      console.warn('seg overlay: no geometry for', imageId, err);
      return;
    }
    ctx.setTransform(dpr * (x[0] - o[0]) / cols, dpr * (x[1] - o[1]) / cols,
      dpr * (y[0] - o[0]) / rows, dpr * (y[1] - o[1]) / rows, dpr * o[0], dpr * o[1]);
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = opacity;
    for (const entry of entries) ctx.drawImage(bitmapOf(entry), 0, 0, cols, rows);
    ctx.globalAlpha = 1;
  }

  function map() {
    bySlice = new Map();
    const imageIds = viewport.getImageIds?.() ?? [];
    if (!imageIds.length || !segments.length) return;
    const bySop = new Map();
    const positions = [];
    for (const id of imageIds) {
      const sop = sopOfImageId(id);
      if (sop && !bySop.has(sop)) bySop.set(sop, id);
      const ipp = metaData.get('imagePlaneModule', id)?.imagePositionPatient;
      if (ipp) positions.push([id, ipp]);
    }
    for (const s of segments) {
      for (const f of s.frames) {
        let id = f.refSop ? bySop.get(f.refSop) : undefined;
        if (!id && f.position.length === 3) {
          const hit = positions.find(([, p]) => Math.hypot(p[0] - f.position[0], p[1] - f.position[1],
            p[2] - f.position[2]) < 0.01);
          id = hit?.[0];
        }
        if (!id) continue;
        if (!bySlice.has(id)) bySlice.set(id, []);
        bySlice.get(id).push({ mask: f.mask, rows: s.rows, cols: s.cols, color: s.color, bitmap: null });
      }
    }
  }

  const onRendered = () => draw();
  element.addEventListener(Enums.Events.IMAGE_RENDERED, onRendered);

  return {
    setSegments(list) {
      segments = list ?? [];
      map();
      draw();
    },
    /** Re-map after the viewport's stack changed. */
    refresh() {
      map();
      draw();
    },
    setVisible(on) {
      visible = Boolean(on);
      draw();
    },
    setOpacity(value) {
      opacity = Math.min(1, Math.max(0, Number(value)));
      draw();
    },
    labels() {
      return segments.map((s) => s.label);
    },
    /** Indices in the stack of the slices that have a mask. */
    sliceIndices() {
      const ids = viewport.getImageIds?.() ?? [];
      return ids.map((id, i) => (bySlice.has(id) ? i : -1)).filter((i) => i >= 0);
    },
    /** Overlay pixels (device pixels) drawn on the canvas for the slice on screen. */
    drawnPixels() {
      if (!canvas.width || !canvas.height) return 0;
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i]) n += 1;
      return n;
    },
    draw,
    destroy() {
      element.removeEventListener(Enums.Events.IMAGE_RENDERED, onRendered);
      segments = [];
      bySlice = new Map();
      ctx.clearRect(0, 0, canvas.width, canvas.height);
    },
  };
}
