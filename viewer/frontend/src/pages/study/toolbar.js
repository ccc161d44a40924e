// @ts-check
// The study viewer's toolbar and keyboard: tools, window presets of the active viewport's
// modality, invert/reset, and the AI SEG controls (the viewport's). Keys: see keys.js.
import { h } from '../../dom.js';
import { TOOLS } from '../../viewer/cornerstone.js';
import { TOOL_BUTTONS, keyAction, presetsFor } from './keys.js';
import { activeViewer } from './state.js';

/** @typedef {import('./state.js').StudyState} StudyState */
/** @typedef {import('./keys.js').Preset} Preset */
/** @typedef {import('./keys.js').ToolButton} ToolButton */

/**
 * @typedef {object} Toolbar
 * @property {HTMLElement} el
 * @property {() => void} renderPresets  the presets of the active viewport's modality
 * @property {(tool: ToolButton['tool']) => void} selectTool  the left button's tool, on both viewports
 */

/**
 * The toolbar; its keys act while the page is shown (removed by state.disposers).
 * @param {StudyState} state
 * @param {{ controls: HTMLElement, toggleable: () => boolean, toggle: () => void }} segControls
 *   the viewport's AI SEG controls
 * @returns {Toolbar}
 */
export function mountToolbar(state, segControls) {
  const toolButtons = TOOL_BUTTONS.map((t) => h('button', {
    class: 'btn tool', type: 'button', testid: `tool-${t.id}`, title: `${t.name ?? t.label} (${t.key.toUpperCase()})`,
    dataset: { tool: TOOLS[t.tool] }, onClick: () => selectTool(t.tool),
  }, t.label));
  // Window presets follow the modality of the series in the active viewport.
  const presetGroup = h('span', { class: 'group presets', testid: 'wl-presets' });
  /** @type {readonly Preset[]} */
  let presets = [];

  /** @param {Preset} p */
  function applyPreset(p) {
    const v = activeViewer(state);
    if (!v) return;
    if (p.reset) v.resetWindow();
    else if (p.width !== undefined && p.center !== undefined) v.setWindow(p.width, p.center);
  }

  function renderPresets() {
    const modality = state.priorActive && state.prior ? state.prior.modality : state.mainModality;
    presets = presetsFor(modality);
    presetGroup.dataset.modality = String(modality ?? '');
    presetGroup.replaceChildren(...presets.map((p) => h('button', {
      class: 'btn preset', type: 'button', testid: `wl-preset-${p.id}`,
      title: p.reset ? `The image's own window (${p.key})` : `W ${p.width} / L ${p.center} (${p.key})`,
      dataset: p.reset ? {} : { width: String(p.width), center: String(p.center) },
      onClick: () => applyPreset(p),
    }, p.label)));
  }

  /** @param {ToolButton['tool']} tool */
  function selectTool(tool) {
    if (!state.viewer) return;
    const name = TOOLS[tool];
    state.viewer.setPrimaryTool(name);
    state.prior?.viewer?.setPrimaryTool(name);
    for (const b of toolButtons) b.classList.toggle('active', b.dataset.tool === name);
  }

  /** @param {KeyboardEvent} event */
  const onKey = (event) => {
    const v = activeViewer(state);
    if (!state.viewer || !v) return;
    const target = event.target;
    if (target instanceof HTMLElement && target.closest('input, textarea, select, [contenteditable="true"]')) return;
    const action = keyAction(event, presets, segControls.toggleable());
    if (!action) return;
    switch (action.kind) {
      case 'scroll': v.scrollBy(action.by); break;
      case 'first': v.scrollTo(0); break;
      case 'last': v.scrollTo(Number.MAX_SAFE_INTEGER); break;
      case 'toggle-seg': segControls.toggle(); break;
      case 'preset': applyPreset(action.preset); break;
      case 'tool': selectTool(action.tool); break;
    }
    event.preventDefault();
  };
  document.addEventListener('keydown', onKey);
  state.disposers.push(() => document.removeEventListener('keydown', onKey));

  const el = h('div', { class: 'viewer-toolbar', role: 'toolbar' },
    h('span', { class: 'group' }, toolButtons),
    presetGroup,
    h('span', { class: 'group' },
      h('button', { class: 'btn', type: 'button', testid: 'viewer-invert', onClick: () => activeViewer(state)?.invert() }, 'Invert'),
      h('button', { class: 'btn', type: 'button', testid: 'viewer-reset', onClick: () => activeViewer(state)?.reset() }, 'Reset')),
    segControls.controls);
  return { el, renderPresets, selectTool };
}
