// @ts-check
// The study viewer's window presets and keyboard: which preset, tool or action a key
// means. Pure (no DOM, no Cornerstone), so Vitest checks it (frontend/tests/study_keys.test.js).

/**
 * A window preset: a width/center in Hounsfield units, or `reset` for the image's own window.
 * @typedef {{ id: string, label: string, key: string, width?: number, center?: number,
 *   reset?: boolean }} Preset
 */

/** Window presets of CT (Hounsfield units); keys 1–4. @type {readonly Preset[]} */
export const CT_PRESETS = [
  { id: 'lung', label: 'Lung', width: 1500, center: -600, key: '1' },
  { id: 'mediastinum', label: 'Mediastinum', width: 350, center: 50, key: '2' },
  { id: 'bone', label: 'Bone', width: 2000, center: 300, key: '3' },
  { id: 'brain', label: 'Brain', width: 80, center: 40, key: '4' },
];
/** Radiographs, MR, US, ...: no Hounsfield scale, so only the image's own window back. @type {readonly Preset[]} */
const DEFAULT_PRESETS = [{ id: 'default', label: 'Default', key: '1', reset: true }];

/**
 * The window presets that make sense for a series' modality.
 * @param {string | null | undefined} modality
 * @returns {readonly Preset[]}
 */
export function presetsFor(modality) {
  return String(modality ?? '').toUpperCase() === 'CT' ? CT_PRESETS : DEFAULT_PRESETS;
}

/**
 * The toolbar's tool buttons: `tool` names a key of cornerstone.js's TOOLS.
 * @typedef {{ tool: 'windowLevel' | 'pan' | 'zoom' | 'length' | 'angle' | 'ellipse' | 'rectangle',
 *   label: string, name?: string, id: string, key: string }} ToolButton
 */
/** @type {readonly ToolButton[]} */
export const TOOL_BUTTONS = [
  { tool: 'windowLevel', label: 'W/L', id: 'wl', key: 'w' },
  { tool: 'pan', label: 'Pan', id: 'pan', key: 'p' },
  { tool: 'zoom', label: 'Zoom', id: 'zoom', key: 'z' },
  { tool: 'length', label: 'Length', id: 'length', key: 'l' },
  { tool: 'angle', label: 'Angle', id: 'angle', key: 'a' },
  { tool: 'ellipse', label: 'Ellipse', name: 'Ellipse ROI', id: 'ellipse-roi', key: 'e' },
  { tool: 'rectangle', label: 'Rect', name: 'Rectangle ROI', id: 'rectangle-roi', key: 'r' },
];

/** Keys that move through the stack, and by how many images. @type {Readonly<Record<string, number>>} */
const SCROLL_STEPS = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };

/**
 * What a key press asks of the viewer.
 * @typedef {{ kind: 'scroll', by: number } | { kind: 'first' } | { kind: 'last' }
 *   | { kind: 'toggle-seg' } | { kind: 'preset', preset: Preset }
 *   | { kind: 'tool', tool: ToolButton['tool'] }} KeyAction
 */

/**
 * The action of a key press, or null when the viewer leaves the key alone (a modifier is
 * held, or the key means nothing here). `S` toggles the AI segmentation only when
 * `segToggleable` (it is shown and enabled).
 * @param {{ key: string, ctrlKey?: boolean, metaKey?: boolean, altKey?: boolean }} event
 * @param {readonly Preset[]} presets  the presets of the active viewport's modality
 * @param {boolean} segToggleable
 * @returns {KeyAction | null}
 */
export function keyAction(event, presets, segToggleable) {
  if (event.ctrlKey || event.metaKey || event.altKey) return null;
  const { key } = event;
  if (key in SCROLL_STEPS) return { kind: 'scroll', by: SCROLL_STEPS[key] };
  if (key === 'Home') return { kind: 'first' };
  if (key === 'End') return { kind: 'last' };
  if (key.toLowerCase() === 's' && segToggleable) return { kind: 'toggle-seg' };
  const preset = presets.find((p) => p.key === key);
  if (preset) return { kind: 'preset', preset };
  const tool = TOOL_BUTTONS.find((t) => t.key === key.toLowerCase());
  if (tool) return { kind: 'tool', tool: tool.tool };
  return null;
}
