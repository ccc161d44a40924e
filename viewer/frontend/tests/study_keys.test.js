// @ts-check
import { describe, expect, it } from 'vitest';
import { CT_PRESETS, TOOL_BUTTONS, keyAction, presetsFor } from '../src/pages/study/keys.js';

describe('presetsFor', () => {
  it('gives CT the Hounsfield presets, whatever the case', () => {
    expect(presetsFor('CT')).toBe(CT_PRESETS);
    expect(presetsFor('ct')).toBe(CT_PRESETS);
    expect(CT_PRESETS.map((p) => p.key)).toEqual(['1', '2', '3', '4']);
  });
  it("gives other modalities only the image's own window", () => {
    for (const modality of ['CR', 'MR', 'US', '', null, undefined]) {
      const presets = presetsFor(modality);
      expect(presets).toHaveLength(1);
      expect(presets[0]).toMatchObject({ id: 'default', key: '1', reset: true });
    }
  });
});

describe('keyAction', () => {
  const ct = presetsFor('CT');

  it('scrolls by one image with the arrows and by ten with the page keys', () => {
    expect(keyAction({ key: 'ArrowUp' }, ct, false)).toEqual({ kind: 'scroll', by: -1 });
    expect(keyAction({ key: 'ArrowLeft' }, ct, false)).toEqual({ kind: 'scroll', by: -1 });
    expect(keyAction({ key: 'ArrowDown' }, ct, false)).toEqual({ kind: 'scroll', by: 1 });
    expect(keyAction({ key: 'ArrowRight' }, ct, false)).toEqual({ kind: 'scroll', by: 1 });
    expect(keyAction({ key: 'PageUp' }, ct, false)).toEqual({ kind: 'scroll', by: -10 });
    expect(keyAction({ key: 'PageDown' }, ct, false)).toEqual({ kind: 'scroll', by: 10 });
    expect(keyAction({ key: 'Home' }, ct, false)).toEqual({ kind: 'first' });
    expect(keyAction({ key: 'End' }, ct, false)).toEqual({ kind: 'last' });
  });

  it('leaves keys with a modifier to the browser', () => {
    for (const mod of ['ctrlKey', 'metaKey', 'altKey']) {
      expect(keyAction({ key: 'ArrowDown', [mod]: true }, ct, true)).toBeNull();
      expect(keyAction({ key: '1', [mod]: true }, ct, true)).toBeNull();
    }
  });

  it("picks the active modality's preset by its digit", () => {
    expect(keyAction({ key: '3' }, ct, false)).toEqual({ kind: 'preset', preset: CT_PRESETS[2] });
    expect(keyAction({ key: '3' }, presetsFor('CR'), false)).toBeNull();
    expect(keyAction({ key: '1' }, presetsFor('CR'), false)).toMatchObject({ kind: 'preset', preset: { reset: true } });
  });

  it('selects tools by letter, upper or lower case', () => {
    for (const t of TOOL_BUTTONS) {
      expect(keyAction({ key: t.key }, ct, false)).toEqual({ kind: 'tool', tool: t.tool });
      expect(keyAction({ key: t.key.toUpperCase() }, ct, false)).toEqual({ kind: 'tool', tool: t.tool });
    }
    expect(new Set(TOOL_BUTTONS.map((t) => t.key)).size).toBe(TOOL_BUTTONS.length);
  });

  it('toggles the AI segmentation with S only when it can be toggled', () => {
    expect(keyAction({ key: 's' }, ct, true)).toEqual({ kind: 'toggle-seg' });
    expect(keyAction({ key: 'S' }, ct, true)).toEqual({ kind: 'toggle-seg' });
    expect(keyAction({ key: 's' }, ct, false)).toBeNull();
  });

  it('ignores other keys', () => {
    expect(keyAction({ key: 'q' }, ct, true)).toBeNull();
    expect(keyAction({ key: 'Enter' }, ct, true)).toBeNull();
  });
});
