// @ts-check
import { describe, expect, it } from 'vitest';
import {
  canSign, deltaHistory, firedRules, flagBadge, hilText, isLabReviewer, isValidCode,
  ljGeometry, noticeBadge, parseLabPath, qcText, rangeText, readbackProblem, secondsText,
  seesLab, seesLabDashboard, sortHeld, timelineRows, valueText, westgardRules,
} from '../src/pages/lab_format.js';

describe('who sees the lab', () => {
  it('shows the area to reviewers and county accounts, the dashboard to reviewers and admins', () => {
    expect(seesLab({ roles: ['lab_reviewer'] })).toBe(true);
    expect(seesLab({ roles: ['site_user'] })).toBe(true);
    expect(seesLab({ roles: ['radiologist', 'admin'] })).toBe(false);
    expect(seesLab(null)).toBe(false);
    expect(isLabReviewer({ roles: ['site_user'] })).toBe(false);
    expect(seesLabDashboard({ roles: ['admin'] })).toBe(true);
    expect(seesLabDashboard({ roles: ['site_user'] })).toBe(false);
  });
});

describe('lab routes', () => {
  it('reads the lab pages and refuses odd accessions', () => {
    expect(parseLabPath('/lab')).toEqual({ name: 'lab' });
    expect(parseLabPath('/lab/critical')).toEqual({ name: 'lab-critical' });
    expect(parseLabPath('/lab/result/42')).toEqual({ name: 'lab-result', resultId: '42' });
    expect(parseLabPath('/lab/result/0')).toBeNull();
    expect(parseLabPath('/lab/specimen/L00000042')).toEqual({ name: 'lab-specimen', accession: 'L00000042' });
    expect(parseLabPath('/lab/specimen/..%2F..%2Fetc')).toEqual({ name: 'lab' });
    expect(parseLabPath('/lab/specimen/%E0%A4%A')).toEqual({ name: 'lab' });
    expect(parseLabPath('/lab/box/BOX-7')).toEqual({ name: 'lab-box', boxCode: 'BOX-7' });
    expect(parseLabPath('/pathology')).toBeNull();
    expect(isValidCode('L1\n')).toBe(false);
    expect(isValidCode('L1')).toBe(true);
  });
});

describe('a held result', () => {
  const held = {
    id: 3, test_code: 'K', value: 6.9, value_text: '', units: 'mmol/L', ref_low: 3.5, ref_high: 5.1,
    flag: 'H', critical: false, state: 'held',
    qc_hold: 'QC reject on CHEM1 run R7: 1-3s', qc: { status: 'reject', rules: ['1-3s'] },
    hil: { L: 10, H: 120 },
    rules_fired: [{ rule: 'range', message: 'above range', severity: 'info' },
      { rule: 'qc-hold', message: 'QC reject', severity: 'hold' }],
    history: [{ value: 4.1, measured_at: '2026-01-01T00:00:00Z' }, { value: 4.4, measured_at: '2026-02-01T00:00:00Z' }],
  };
  it('reads value, range, flag, QC with its Westgard rule, HIL and rules', () => {
    expect(valueText(held)).toBe('6.9 mmol/L');
    expect(valueText({ value: null, value_text: '<0.01', units: 'ng/mL' })).toBe('<0.01 ng/mL');
    expect(valueText({ value: null })).toBe('—');
    expect(rangeText(held)).toBe('3.5–5.1');
    expect(rangeText({ ref_high: 5 })).toBe('< 5');
    expect(flagBadge(held).label).toBe('H');
    expect(flagBadge({ abnormal_flag: 'HH', critical: true }).cls).toContain('crit');
    expect(flagBadge({}).label).toBe('');
    expect(qcText(held)).toBe('QC reject: 1-3s');
    expect(qcText({ qc_hold: 'QC reject on CHEM1 run R7: 2-2s, R-4s' })).toBe('QC reject: 2-2s, R-4s');
    expect(qcText({ qc: { status: 'accept', rules: [] } })).toBe('QC accept');
    expect(qcText({ qc: null })).toBe('');
    expect(qcText({})).toBe('');
    expect(westgardRules(held)).toEqual(['1-3s']);
    expect(hilText(held.hil)).toBe('H 120 · L 10');
    expect(hilText(null)).toBe('');
    expect(firedRules(held.rules_fired).map((f) => f.rule)).toEqual(['qc-hold', 'range']);
    expect(firedRules([{ rule: 'critical', message: 'critical: GLU 28.4 above 25' }])[0].message)
      .toBe('GLU 28.4 above 25');
    expect(firedRules(null)).toEqual([]);
    expect(deltaHistory(held).map((p) => p.value)).toEqual(['4.4', '4.1']);
  });
  it('is signed only without a QC hold', () => {
    expect(canSign(held)).toBe(false);
    expect(canSign({ ...held, qc_hold: '' })).toBe(true);
    expect(canSign({ state: 'rerun' })).toBe(false);
    expect(canSign(null)).toBe(false);
  });
  it('lists critical first, then the oldest', () => {
    const rows = [
      { id: 1, critical: false, measured_at: '2026-01-01T08:00:00Z' },
      { id: 2, critical: true, measured_at: '2026-01-01T10:00:00Z' },
      { id: 3, critical: false, measured_at: '2026-01-01T07:00:00Z' },
      { id: 4, critical: true, measured_at: '2026-01-01T09:00:00Z' },
    ];
    expect(sortHeld(rows).map((r) => r.id)).toEqual([4, 2, 3, 1]);
  });
});

describe('critical values', () => {
  it('checks the read-back at the test decimals', () => {
    expect(readbackProblem('6.9', '6.9')).toBe('');
    expect(readbackProblem('6.90 mmol/L', 6.9)).toBe('');
    expect(readbackProblem('>70.0', '>70')).toBe('');
    expect(readbackProblem('70', '>70')).toContain('does not match');
    expect(readbackProblem('9.6', '6.9')).toContain('does not match');
    expect(readbackProblem('', 6.9)).toContain('Read the value back');
    expect(readbackProblem('six', 6.9)).toContain('number');
  });
  it('names the notice state', () => {
    expect(noticeBadge({ state: 'acknowledged' }).label).toBe('Acknowledged');
    expect(noticeBadge({ state: 'escalated', tier: 2 }).label).toBe('Escalated (tier 2)');
    expect(noticeBadge({ state: 'notified' }).label).toBe('Awaiting acknowledgement');
  });
  it('shows times in seconds, minutes or hours', () => {
    expect(secondsText(42)).toBe('42 s');
    expect(secondsText(600)).toBe('10.0 min');
    expect(secondsText(10800)).toBe('3.0 h');
    expect(secondsText(null)).toBe('—');
  });
});

describe('custody and QC charts', () => {
  it('orders the timeline in time', () => {
    const rows = timelineRows([{ step: 'received', at: '2026-01-01T10:00:00Z' },
      { step: 'collected', at: '2026-01-01T08:00:00Z' }, { step: 'x' }]);
    expect(rows.map((r) => r.step)).toEqual(['collected', 'received', 'x']);
    expect(timelineRows(null)).toEqual([]);
  });
  it('places z-scores on the Levey-Jennings chart', () => {
    const g = ljGeometry([{ z: 0 }, { z: 3.5, status: 'reject', rules: ['1-3s'] }, { z: -9 }],
      { width: 200, height: 100, pad: 10 });
    expect(g.lines.find((l) => l.sd === 0)?.y).toBe(50);
    expect(g.dots.map((d) => d.x)).toEqual([10, 100, 190]);
    expect(g.dots[0].y).toBe(50);
    expect(g.dots[1].y).toBeCloseTo(15);
    expect(g.dots[2].y).toBe(90);
    expect(g.dots[1].rules).toEqual(['1-3s']);
  });
});
