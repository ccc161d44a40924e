// @ts-check
import { describe, expect, it } from 'vitest';
import {
  canClaim, casePath, consultAction, parseCasePath, qcText, slideName, statText, stepSeconds,
  timelineRows, urgencyBadge,
} from '../src/pages/pathology_format.js';
import { measureText } from '../src/pages/slide_geometry.js';

const pathologist = { roles: ['pathologist'] };

describe('pathology worklist labels', () => {
  it('labels urgency, frozen sections first in look too', () => {
    expect(urgencyBadge('frozen').label).toBe('FROZEN');
    expect(urgencyBadge('stat').label).toBe('STAT');
    expect(urgencyBadge('routine').label).toBe('ROUTINE');
    expect(urgencyBadge(undefined).label).toBe('ROUTINE');
  });
  it('marks QC failures with the number of slides', () => {
    expect(qcText({ qc: 'fail', qc_failed_slides: 2 })).toBe('QC failed (2 slides)');
    expect(qcText({ qc: 'fail', qc_failed_slides: 1 })).toBe('QC failed (1 slide)');
    expect(qcText({ qc: 'pass' })).toBe('QC pass');
    expect(qcText({})).toBe('QC pending');
  });
  it('lets a pathologist claim an open case no one holds', () => {
    expect(canClaim(pathologist, { state: 'qc_passed', assigned_to: null })).toBe(true);
    expect(canClaim(pathologist, { state: 'assigned', assigned_to: 3 })).toBe(false);
    expect(canClaim(pathologist, { state: 'signed' })).toBe(false);
    expect(canClaim({ roles: ['site_user'] }, { state: 'qc_passed' })).toBe(false);
    expect(canClaim(null, { state: 'qc_passed' })).toBe(false);
  });
});

describe('case route', () => {
  it('reads the case and up to two slides', () => {
    expect(parseCasePath('/pathology/case/12')).toEqual({ caseId: '12', slides: [] });
    expect(parseCasePath('/pathology/case/12?slides=3,4,5')).toEqual({ caseId: '12', slides: [3, 4] });
    expect(parseCasePath('/pathology/case/12?slides=x,-1,7')).toEqual({ caseId: '12', slides: [7] });
    expect(parseCasePath('/pathology')).toBeNull();
    expect(casePath(12, [3, 4])).toBe('#/pathology/case/12?slides=3,4');
    expect(casePath(12)).toBe('#/pathology/case/12');
  });
  it('names slides by part, block and stain', () => {
    expect(slideName({ id: 1, part: 'A', block: '1', stain: 'H&E' })).toBe('A1 · H&E');
    expect(slideName({ id: 1, label: 'L-7' })).toBe('L-7');
    expect(slideName({ id: 9 })).toBe('slide 9');
  });
});

describe('timeline', () => {
  const events = [
    { step: 'qc', at: '2026-01-01T10:02:00Z', actor: 'system' },
    { step: 'received', at: '2026-01-01T10:00:00Z', actor: null },
  ];
  it('orders events in time and lists the frozen steps still to come', () => {
    const rows = timelineRows(events, true);
    expect(rows.map((r) => r.step)).toEqual(['received', 'qc', 'first_tile', 'call', 'signed']);
    expect(rows.filter((r) => r.at).length).toBe(2);
    expect(timelineRows(events, false).map((r) => r.step)).toEqual(['received', 'qc']);
    expect(stepSeconds(rows, 'received', 'qc')).toBe(120);
    expect(stepSeconds(rows, 'qc', 'call')).toBeNull();
  });
});

describe('consults', () => {
  it('offers the consultant the answer and the requester the grade, once', () => {
    const c = { consultant_id: 2, requested_by: 1, state: 'requested', concordance: null };
    expect(consultAction(c, 2)).toBe('answer');
    expect(consultAction(c, 1)).toBeNull();
    expect(consultAction({ ...c, state: 'answered' }, 1)).toBe('grade');
    expect(consultAction({ ...c, state: 'answered', concordance: 'minor' }, 1)).toBeNull();
    expect(consultAction(c, null)).toBeNull();
  });
  it('shows the dashboard statistics', () => {
    expect(statText({ n: 3, p50_s: 60, p90_s: 120 }, (s) => `${s}s`)).toBe('p50 60s · p90 120s (n=3)');
    expect(statText({ n: 0 }, String)).toBe('—');
    expect(statText(null, String)).toBe('—');
  });
});

describe('annotation measures', () => {
  it('gives a line its length and a polygon its area', () => {
    expect(measureText({ kind: 'line', coords: [[0, 0], [0, 400]] }, 0.25)).toBe('100 µm');
    expect(measureText({ kind: 'polygon', coords: [[0, 0], [400, 0], [400, 400]] }, 0.25)).toBe('5000 µm²');
    expect(measureText({ kind: 'point', coords: [[1, 1]] }, 0.25)).toBe('');
    expect(measureText({ kind: 'line', coords: [[0, 0], [0, 400]] }, null)).toBe('');
  });
});
