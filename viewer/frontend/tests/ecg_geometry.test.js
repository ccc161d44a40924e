// @ts-check
import { describe, expect, it } from 'vitest';
import { STANDARD, basePxPerMm, caliperReading, paperLayout, samplePointMm } from '../src/pages/ecg_geometry.js';

describe('ECG paper geometry', () => {
  it('lays out the standard paper: four 2.5 s columns of 62.5 mm, four 30 mm rows', () => {
    expect(STANDARD.colMm).toBe(62.5);
    expect(STANDARD.leftMm).toBe(12);
    expect(STANDARD.widthMm).toBe(12 + 4 * 62.5 + 3);
    expect(STANDARD.heightMm).toBe(124);
    expect(STANDARD.baselineMm(0)).toBe(20);
    expect(STANDARD.baselineMm(1)).toBe(50);
  });
  it('doubles the column width at 50 mm/s and the row height at 20 mm/mV', () => {
    const fast = paperLayout(50, 10);
    expect(fast.colMm).toBe(2 * STANDARD.colMm);
    expect(paperLayout(25, 20).rowMm).toBe(60);
    expect(paperLayout(25, 5).rowMm).toBe(30);
  });
  it('fits the standard paper to the width, with a floor', () => {
    expect(basePxPerMm(4 + STANDARD.widthMm * 4)).toBeCloseTo(4);
    expect(basePxPerMm(0)).toBeCloseTo((1000 - 4) / STANDARD.widthMm);
    expect(basePxPerMm(100)).toBe(1.5);
  });
  it('places samples at speed and gain: 1 s is 25 mm, 1 mV is 10 mm up', () => {
    expect(samplePointMm(STANDARD, 500, 0, 500, 1, 12, 20)).toEqual({ x: 37, y: 10 });
    expect(samplePointMm(paperLayout(50, 20), 250, 0, 500, -0.5, 0, 20)).toEqual({ x: 25, y: 30 });
  });
  it('measures with calipers: 25 mm is 1000 ms (60 /min), 10 mm is 1 mV', () => {
    const r = caliperReading(STANDARD, { x: 10, y: 30 }, { x: 35, y: 20 });
    expect(r.dtMs).toBeCloseTo(1000);
    expect(r.ratePerMin).toBeCloseTo(60);
    expect(r.dmv).toBeCloseTo(1);
    expect(caliperReading(STANDARD, { x: 5, y: 5 }, { x: 5, y: 5 }).ratePerMin).toBeNull();
  });
});
