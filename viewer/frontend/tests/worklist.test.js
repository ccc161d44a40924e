// @ts-check
import { describe, expect, it } from 'vitest';
import { formatDate, formatDuration, formatPersonName, humanize } from '../src/dom.js';
import { ageSex, canReport, priorityClass, priorityLabel } from '../src/pages/worklist.js';

describe('worklist priorities', () => {
  it('labels numeric priorities as the server sorts them', () => {
    expect(priorityLabel({ priority: 9 })).toBe('STAT');
    expect(priorityLabel({ priority: 8 })).toBe('AI CRITICAL');
    expect(priorityLabel({ priority: 7 })).toBe('URGENT');
    expect(priorityLabel({ priority: 3 })).toBe('ROUTINE');
    expect(priorityLabel({})).toBe('ROUTINE');
    expect(priorityLabel({ priority: 'stat' })).toBe('STAT');
    expect(priorityLabel({ priority: 9, priority_label: 'Custom' })).toBe('Custom');
  });
  it('gives each label a badge class', () => {
    expect(priorityClass('AI CRITICAL')).toBe('prio-aicritical');
    expect(priorityClass('STAT')).toBe('prio-stat');
  });
  it('shows age and sex, and who may report', () => {
    expect(ageSex({ patient_age: '66y', patient_sex: 'F' })).toBe('66y F');
    expect(ageSex({ patient_sex: 'M' })).toBe('M');
    expect(canReport({ roles: ['radiologist'] })).toBe(true);
    expect(canReport({ roles: ['site_user', 'admin'] })).toBe(false);
    expect(canReport(null)).toBe(false);
  });
});

describe('formatting', () => {
  it('formats durations, overdue ones as positive', () => {
    expect(formatDuration(45)).toBe('45s');
    expect(formatDuration(125)).toBe('2m 05s');
    expect(formatDuration(3723)).toBe('1h 02m 03s');
    expect(formatDuration(2 * 86400 + 3 * 3600 + 60)).toBe('2d 03h 01m');
    expect(formatDuration(-90)).toBe('1m 30s');
  });
  it('formats DICOM dates and person names', () => {
    expect(formatDate('20240131')).toBe('2024-01-31');
    expect(formatDate('2024-01-31')).toBe('2024-01-31');
    expect(formatDate(null)).toBe('');
    expect(formatPersonName('Doe^Jane^Q')).toBe('Doe, Jane Q');
    expect(formatPersonName({ Alphabetic: 'Doe' })).toBe('Doe');
    expect(humanize('clinical_history')).toBe('Clinical history');
  });
});
