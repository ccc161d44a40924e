// @ts-check
// Cornerstone3D glue: one StackViewport per study page, fed with wadors: image IDs
// through the center's authenticated DICOMweb proxy.
import {
  Enums,
  RenderingEngine,
  init as coreInit,
  utilities,
} from '@cornerstonejs/core';
import { init as dicomImageLoaderInit, wadors } from '@cornerstonejs/dicom-image-loader';
import {
  AngleTool,
  EllipticalROITool,
  Enums as ToolEnums,
  LengthTool,
  PanTool,
  RectangleROITool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as toolsInit,
} from '@cornerstonejs/tools';

export const DICOMWEB_BASE = '/dicom-web';

export const TOOLS = {
  windowLevel: WindowLevelTool.toolName,
  pan: PanTool.toolName,
  zoom: ZoomTool.toolName,
  length: LengthTool.toolName,
  angle: AngleTool.toolName,
  ellipse: EllipticalROITool.toolName,
  rectangle: RectangleROITool.toolName,
};

const ALL_TOOLS = [WindowLevelTool, PanTool, ZoomTool, StackScrollTool, LengthTool, AngleTool,
  EllipticalROITool, RectangleROITool];

/** @type {Promise<void> | null} */
let initPromise = null;
let instanceCounter = 0;

/** Initialise Cornerstone core, the DICOM image loader (web workers) and tools, once. */
export function initCornerstone() {
  if (!initPromise) {
    initPromise = (async () => {
      await coreInit();
      const cores = navigator.hardwareConcurrency || 2;
      dicomImageLoaderInit({ maxWebWorkers: Math.max(1, Math.min(4, Math.floor(cores / 2))) });
      await toolsInit();
      for (const tool of ALL_TOOLS) addTool(tool);
    })();
  }
  return initPromise;
}

/** @param {unknown} value  a path segment of a URL */
function seg(value) {
  return encodeURIComponent(String(value));
}

/**
 * The first value of DICOM JSON attribute `tag` ("00080018") of `instance`.
 * @param {Record<string, { Value?: unknown[] }> | null | undefined} instance
 * @param {string} tag
 */
function tagValue(instance, tag) {
  const element = instance?.[tag];
  return element?.Value?.[0];
}

/**
 * Fetch the series' DICOM JSON metadata, register it with the wadors metadata manager,
 * and return the image IDs in `orderedSops` order (frames expanded for multi-frame
 * instances). Instances without metadata are skipped.
 * @param {string} studyUid
 * @param {string} seriesUid
 * @param {readonly string[] | null | undefined} orderedSops  SOP instance UIDs; none: the archive's order
 * @returns {Promise<string[]>}
 */
export async function loadSeriesImageIds(studyUid, seriesUid, orderedSops) {
  const base = `${window.location.origin}${DICOMWEB_BASE}/studies/${seg(studyUid)}/series/${seg(seriesUid)}`;
  const response = await fetch(`${base}/metadata`, {
    credentials: 'same-origin',
    headers: { Accept: 'application/dicom+json, application/json' },
  });
  if (!response.ok) throw new Error(`series metadata: HTTP ${response.status}`);
  const instances = await response.json();
  /** @type {Map<unknown, any>} */
  const bySop = new Map();
  for (const instance of instances) {
    const sop = tagValue(instance, '00080018');
    if (sop) bySop.set(sop, instance);
  }
  const order = orderedSops?.length ? orderedSops : [...bySop.keys()];
  /** @type {string[]} */
  const imageIds = [];
  for (const sop of order) {
    const instance = bySop.get(sop);
    if (!instance) continue;
    const frames = Number(tagValue(instance, '00280008')) || 1;
    const instanceBase = `wadors:${base}/instances/${seg(sop)}/frames/`;
    wadors.metaDataManager.add(`${instanceBase}1`, instance);
    for (let f = 1; f <= frames; f += 1) imageIds.push(`${instanceBase}${f}`);
  }
  return imageIds;
}

/**
 * Enable `element` as a StackViewport with the reading tools bound:
 * left = the selected tool (window/level by default), middle = pan, right = zoom,
 * wheel = scroll through the stack. Returns a small controller.
 */
/**
 * @param {HTMLDivElement} element
 * @param {{ onRendered?: (viewport: import('@cornerstonejs/core').Types.IStackViewport) => void }} [options]
 */
export async function createStackViewer(element, { onRendered } = {}) {
  await initCornerstone();
  instanceCounter += 1;
  const engineId = `rdc-engine-${instanceCounter}`;
  const viewportId = `rdc-stack-${instanceCounter}`;
  const toolGroupId = `rdc-tools-${instanceCounter}`;
  const engine = new RenderingEngine(engineId);
  engine.enableElement({
    viewportId,
    type: Enums.ViewportType.STACK,
    element,
    defaultOptions: { background: [0, 0, 0] },
  });
  const viewport = /** @type {import('@cornerstonejs/core').Types.IStackViewport} */ (
    engine.getViewport(viewportId));

  const created = ToolGroupManager.createToolGroup(toolGroupId);
  // undefined only for an id already in use, which the counter rules out
  if (!created) throw new Error(`tool group ${toolGroupId} exists already`);
  const toolGroup = created;
  for (const tool of ALL_TOOLS) toolGroup.addTool(tool.toolName);
  toolGroup.addViewport(viewportId, engineId);
  const { MouseBindings } = ToolEnums;
  toolGroup.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  /** @type {string | null} */
  let primary = null;
  /** @param {string} name  a tool's name (TOOLS) */
  function setPrimaryTool(name) {
    for (const t of Object.values(TOOLS)) if (t !== name) toolGroup.setToolPassive(t);
    const bindings = [{ mouseButton: MouseBindings.Primary }];
    if (name === TOOLS.pan) bindings.push({ mouseButton: MouseBindings.Auxiliary });
    if (name === TOOLS.zoom) bindings.push({ mouseButton: MouseBindings.Secondary });
    toolGroup.setToolActive(name, { bindings });
    if (name !== TOOLS.pan) toolGroup.setToolActive(TOOLS.pan, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    if (name !== TOOLS.zoom) toolGroup.setToolActive(TOOLS.zoom, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    primary = name;
  }
  setPrimaryTool(TOOLS.windowLevel);

  const preventMenu = (/** @type {Event} */ e) => e.preventDefault();
  element.addEventListener('contextmenu', preventMenu);
  const renderedHandler = () => onRendered?.(viewport);
  element.addEventListener(Enums.Events.IMAGE_RENDERED, renderedHandler);
  const resizeObserver = new ResizeObserver(() => engine.resize(true, true));
  resizeObserver.observe(element);

  return {
    viewport,
    get primaryTool() {
      return primary;
    },
    setPrimaryTool,
    /**
     * @param {string[]} imageIds
     * @param {number} [index]  the image shown first
     */
    async setStack(imageIds, index = 0) {
      await viewport.setStack(imageIds, index);
      viewport.render();
    },
    /** Window width/center (DICOM linear VOI function, as the presets are defined). */
    /**
     * @param {number} width
     * @param {number} center
     */
    setWindow(width, center) {
      viewport.setProperties({ voiRange: utilities.windowLevel.toLowHighRange(width, center) });
      viewport.render();
    },
    getWindow() {
      const voi = viewport.getProperties()?.voiRange;
      if (!voi) return null;
      const { windowWidth, windowCenter } = utilities.windowLevel.toWindowLevel(voi.lower, voi.upper);
      return { width: windowWidth, center: windowCenter };
    },
    /** @param {number} delta  images forward (negative: back) */
    scrollBy(delta) {
      const ids = viewport.getImageIds();
      if (!ids.length) return;
      const target = Math.min(ids.length - 1, Math.max(0, viewport.getCurrentImageIdIndex() + delta));
      viewport.setImageIdIndex(target);
    },
    /** @param {number} index  clamped to the stack */
    scrollTo(index) {
      const ids = viewport.getImageIds();
      if (!ids.length) return;
      viewport.setImageIdIndex(Math.min(ids.length - 1, Math.max(0, index)));
    },
    position() {
      return { index: viewport.getCurrentImageIdIndex(), count: viewport.getImageIds().length };
    },
    reset() {
      viewport.resetCamera();
      viewport.resetProperties();
      viewport.render();
    },
    /**
     * Fit the image to the element again, after the layout changed the element's size
     * (a prior opened or closed beside it). The resize observer keeps the camera on a
     * resize, so without this the image keeps its old scale and runs off the viewport.
     */
    fit() {
      engine.resize(true, false); // now, not on the observer's next callback
      viewport.resetCamera();
      viewport.render();
    },
    /** The image's own window (what "Default" restores), keeping the camera. */
    resetWindow() {
      const { invert } = viewport.getProperties();
      viewport.resetProperties();
      if (invert) viewport.setProperties({ invert });
      viewport.render();
    },
    /**
     * Where the image lies on the canvas, in CSS pixels: {left, top, width, height} of the
     * image's corners, and the canvas' own {canvasWidth, canvasHeight} (tests use it).
     */
    imageExtent() {
      const data = viewport.getImageData?.();
      const canvas = viewport.canvas ?? element.querySelector('canvas');
      if (!data || !canvas) return null;
      const { dimensions, spacing, origin, direction } = data;
      /** @type {(i: number, j: number) => import('@cornerstonejs/core').Types.Point3} */
      const at = (i, j) => /** @type {import('@cornerstonejs/core').Types.Point3} */ (
        [0, 1, 2].map((a) => origin[a] + i * spacing[0] * direction[a] + j * spacing[1] * direction[3 + a]));
      const corners = [at(-0.5, -0.5), at(dimensions[0] - 0.5, dimensions[1] - 0.5)]
        .map((w) => viewport.worldToCanvas(w));
      const xs = corners.map((c) => c[0]);
      const ys = corners.map((c) => c[1]);
      return {
        left: Math.min(...xs), top: Math.min(...ys),
        width: Math.abs(xs[1] - xs[0]), height: Math.abs(ys[1] - ys[0]),
        canvasWidth: canvas.clientWidth, canvasHeight: canvas.clientHeight,
      };
    },
    invert() {
      const { invert } = viewport.getProperties();
      viewport.setProperties({ invert: !invert });
      viewport.render();
    },
    destroy() {
      resizeObserver.disconnect();
      element.removeEventListener(Enums.Events.IMAGE_RENDERED, renderedHandler);
      element.removeEventListener('contextmenu', preventMenu);
      ToolGroupManager.destroyToolGroup(toolGroupId);
      engine.destroy();
    },
  };
}
