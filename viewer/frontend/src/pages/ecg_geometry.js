// @ts-check
// The 12-lead ECG paper's geometry in millimetres, apart from the canvas so that it is
// unit-tested (frontend/tests/ecg_geometry.test.js): the layout at a speed and gain, the
// scale that fits the standard paper to the screen, where a sample lies on the paper,
// and what a pair of calipers measures.

/** Paper speeds (mm/s) and gains (mm/mV) a reader may choose; 25 and 10 are the standard. */
export const SPEEDS = [25, 50];
export const GAINS = [5, 10, 20];
/** Seconds of signal in each of the four columns. */
export const COL_S = 2.5;

/**
 * @typedef {object} PaperLayout
 * @property {number} speed mm/s
 * @property {number} gain mm/mV
 * @property {number} leftMm room for the calibration pulse at the left
 * @property {number} colMm width of one column (2.5 s)
 * @property {number} rowMm height of one row
 * @property {number} widthMm
 * @property {number} heightMm
 * @property {(row: number) => number} baselineMm the 0 mV line of a row (0: top)
 */

/**
 * The paper's layout in millimetres at a speed (mm/s) and gain (mm/mV): each of the four
 * columns holds 2.5 s, so 50 mm/s makes the paper twice as wide; rows grow at 20 mm/mV
 * so that a QRS stays within its row. The calibration pulse (1 mV for 0.2 s) is drawn
 * at the left.
 * @param {number} speed
 * @param {number} gain
 * @returns {PaperLayout}
 */
export function paperLayout(speed, gain) {
  const leftMm = 7 + 0.2 * speed;
  const colMm = COL_S * speed;
  const rowMm = gain >= 20 ? 60 : 30;
  return {
    speed, gain, leftMm, colMm, rowMm,
    widthMm: leftMm + 4 * colMm + 3,
    heightMm: 4 * rowMm + 4,
    baselineMm: (row) => 2 + row * rowMm + rowMm * 0.6,
  };
}

/** The standard paper: 25 mm/s, 10 mm/mV. */
export const STANDARD = paperLayout(25, 10);

/**
 * Pixels per millimetre at zoom 1: millimetres stay millimetres, the standard 25 mm/s
 * paper fits the width (at 50 mm/s the paper is twice as wide and scrolls); never below
 * 1.5 px/mm. A width of 0 (not laid out yet) counts as 1000 px.
 * @param {number} widthPx
 */
export function basePxPerMm(widthPx) {
  const width = widthPx || 1000;
  return Math.max(1.5, (width - 4) / STANDARD.widthMm);
}

/**
 * Where sample `i` of a trace starting at sample `i0` lies, in millimetres: `x0Mm` is
 * where the trace starts, `yMm` its 0 mV line; up is positive voltage.
 * @param {PaperLayout} paper
 * @param {number} i
 * @param {number} i0
 * @param {number} fs sampling frequency (Hz)
 * @param {number} value mV
 * @param {number} x0Mm
 * @param {number} yMm
 * @returns {{ x: number, y: number }}
 */
export function samplePointMm(paper, i, i0, fs, value, x0Mm, yMm) {
  return { x: x0Mm + ((i - i0) / fs) * paper.speed, y: yMm - value * paper.gain };
}

/**
 * What two caliper points (mm on the paper) measure: the time between them (ms), the
 * rate that interval would be (/min; null for 0 ms) and the voltage difference (mV,
 * positive when the first point is lower).
 * @param {PaperLayout} paper
 * @param {{ x: number, y: number }} a
 * @param {{ x: number, y: number }} b
 */
export function caliperReading(paper, a, b) {
  const dtMs = (Math.abs(b.x - a.x) / paper.speed) * 1000;
  const dmv = (a.y - b.y) / paper.gain;
  return { dtMs, dmv, ratePerMin: dtMs > 0 ? 60000 / dtMs : null };
}
