// @ts-check
import { describe, expect, it } from 'vitest';
import {
  dueText, dueTime, findingFigures, formatDue, isWeakMatch, matchText, priorTitle, reviewClass,
} from '../src/pages/study/format.js';

/** @param {Partial<import('../src/pages/study/state.js').Study>} fields */
const study = (fields) => ({ study_id: 1, study_uid: '1.2.3', ...fields });

describe('formatDue', () => {
  it('is minute-precise, in days and hours from a day on', () => {
    expect(formatDue(0)).toBe('< 1m');
    expect(formatDue(59)).toBe('< 1m');
    expect(formatDue(60)).toBe('1m');
    expect(formatDue(59 * 60 + 59)).toBe('59m');
    expect(formatDue(2 * 3600 + 5 * 60 + 30)).toBe('2h 05m');
    expect(formatDue(26 * 3600)).toBe('1d 02h');
    expect(formatDue(-125)).toBe('2m');
  });
});

describe('dueTime and dueText', () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);

  it('counts the server’s seconds_left from now, before due_at', () => {
    expect(dueTime(study({ seconds_left: 90, due_at: '2030-01-01T00:00:00Z' }), now)).toBe(now + 90_000);
    expect(dueTime(study({ due_at: '2026-01-01T13:00:00Z' }), now)).toBe(now + 3_600_000);
  });

  it('has nothing due for a signed study or one without a due time', () => {
    expect(dueTime(study({ status: 'signed', seconds_left: 90 }), now)).toBeNaN();
    expect(dueTime(study({}), now)).toBeNaN();
    expect(dueText(NaN, now)).toBeNull();
  });

  it('says "due in" ahead and "overdue" past the due time', () => {
    expect(dueText(now + 61_000, now)).toEqual({ text: 'due in 1m', overdue: false, secondsLeft: 61 });
    expect(dueText(now - 3_700_000, now)).toEqual({ text: 'overdue 1h 01m', overdue: true, secondsLeft: -3700 });
  });
});

describe('AI findings', () => {
  it('gives each known figure', () => {
    expect(findingFigures({ id: 1, probability: 0.8712, threshold: 0.5, volume_ml: 12.34 }))
      .toBe('p = 87.1% (threshold 50%) · 12.3 mL');
    expect(findingFigures({ id: 1, probability: 0.1 })).toBe('p = 10.0%');
    expect(findingFigures({ id: 1, probability: null })).toBe('');
  });

  it("keeps only letters of the review in its badge's class", () => {
    expect(reviewClass('accepted')).toBe('badge review-accepted');
    expect(reviewClass(null)).toBe('badge review-pending');
    expect(reviewClass('x" onclick="y')).toBe('badge review-xonclicky');
  });
});

describe('priors', () => {
  const weak = { study_id: 7, match: 'name+birthdate', site_id: 'east', date: '20240102', description: 'CT chest' };

  it('tells a match by name and birth date from one by patient ID', () => {
    expect(isWeakMatch(weak)).toBe(true);
    expect(isWeakMatch({ ...weak, match: 'id' })).toBe(false);
    expect(matchText({ ...weak, match: 'id' })).toBe('matched by patient ID');
    expect(matchText(weak)).toBe('matched by name+birthdate');
  });

  it("titles a prior by site, date and description, the loaded study's site name first", () => {
    expect(priorTitle(weak)).toBe('east · 2024-01-02 · CT chest');
    expect(priorTitle({ ...weak, site_name: 'East County' })).toBe('East County · 2024-01-02 · CT chest');
    expect(priorTitle(weak, { site_name: 'East County Hospital', description: 'other' }))
      .toBe('East County Hospital · 2024-01-02 · CT chest');
    expect(priorTitle({ study_id: 7, date: '20240102' }, { site_id: 'west', description: 'MR head' }))
      .toBe('west · 2024-01-02 · MR head');
  });
});
