// @ts-check
import { describe, expect, it } from 'vitest';
import {
  differingFields, draftKey, fieldRows, isSigned, parseDraft, unresolvedFields,
} from '../src/pages/report_form.js';

describe('report form', () => {
  it('treats final, amended, signed and signed_at versions as signed', () => {
    expect(isSigned({ state: 'final' })).toBe(true);
    expect(isSigned({ state: 'draft', signed_at: '2024-01-01T00:00:00Z' })).toBe(true);
    expect(isSigned({ state: 'preliminary' })).toBe(false);
    expect(isSigned(null)).toBe(false);
  });
  it('keys local copies by user, study and version', () => {
    expect(draftKey('dr', '1.2.3', { number: 2 })).toBe('rdc.report-draft:dr:1.2.3:v2');
    expect(draftKey(null, 's', null)).toBe('rdc.report-draft::s:v1');
  });
  it('reads back only well-formed local copies', () => {
    expect(parseDraft('{"fields":{"a":"x"},"at":"t"}')).toEqual({ fields: { a: 'x' }, at: 't' });
    expect(parseDraft('not json')).toBeNull();
    expect(parseDraft('{"other":1}')).toBeNull();
    expect(parseDraft(null)).toBeNull();
  });
  it('finds the local fields that differ from the form', () => {
    const onForm = new Map([['findings', 'saved'], ['impression', 'same']]);
    expect(differingFields({ findings: 'typed', impression: 'same', gone: 'x' }, onForm))
      .toEqual([['findings', 'typed']]);
  });
  it('blocks signing on empty required fields and {{placeholders}}', () => {
    const text = { findings: 'Normal.', impression: 'See {{ai.summary}}', history: '  ' };
    expect(unresolvedFields(['findings', 'impression', 'history', 'missing'],
      (n) => /** @type {Record<string, string>} */ (text)[n])).toEqual(['impression', 'history', 'missing']);
  });
  it('sizes a field to its text, 2 to 12 rows', () => {
    expect(fieldRows('')).toBe(2);
    expect(fieldRows('a\nb\nc')).toBe(4);
    expect(fieldRows('x\n'.repeat(40))).toBe(12);
  });
});
