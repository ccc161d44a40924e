// @ts-check
import { describe, expect, it } from 'vitest';
import {
  clampPoint, formatArea, formatLength, heatmapRgba, lengthUm, osdLevels, pathLengthUm,
  polygonAreaUm2, scaleBar, thinStroke, tileSourceOf, tileUrl,
} from '../src/pages/slide_geometry.js';


/** A factor-2 pyramid of 8192 × 6144 with 512-pixel tiles, as the server answers it. */
const PYRAMID = {
  width: 8192, height: 6144, tile_width: 512, tile_height: 512, mpp: 0.25,
  levels: [
    { level: 0, width: 8192, height: 6144, downsample: 1, tiles_x: 16, tiles_y: 12 },
    { level: 1, width: 4096, height: 3072, downsample: 2, tiles_x: 8, tiles_y: 6 },
    { level: 2, width: 2048, height: 1536, downsample: 4, tiles_x: 4, tiles_y: 3 },
    { level: 3, width: 1024, height: 768, downsample: 8, tiles_x: 2, tiles_y: 2 },
  ],
};

describe('OpenSeadragon levels of a server pyramid', () => {
  it('counts up from the lowest resolution, server level 0 last', () => {
    const levels = osdLevels(PYRAMID);
    expect(levels.map((l) => l.serverLevel)).toEqual([3, 2, 1, 0]);
    expect(levels.map((l) => l.osdLevel)).toEqual([0, 1, 2, 3]);
    expect(levels.map((l) => l.scale)).toEqual([0.125, 0.25, 0.5, 1]);
  });
  it('keeps only the levels the server has, with their real scale (factor 4, a gap)', () => {
    const levels = osdLevels({
      ...PYRAMID,
      levels: [
        { level: 0, width: 8192, height: 6144, downsample: 1 },
        { level: 1, width: 2048, height: 1536, downsample: 4 },
        { level: 2, width: 128, height: 96, downsample: 64 },
      ],
    });
    expect(levels.map((l) => [l.osdLevel, l.serverLevel, l.scale])).toEqual([[0, 2, 0.015625], [1, 1, 0.25], [2, 0, 1]]);
  });
  it('drops unusable levels and repeats, and takes the scale from the width', () => {
    const levels = osdLevels({
      ...PYRAMID,
      levels: [
        { level: 0, width: 8192, height: 6144, downsample: 1 },
        { level: 1, width: 0, height: 0, downsample: 0 },
        { level: 2, width: 99999, height: 6144, downsample: 0.5 },
        { level: 3, width: 2731, height: 2048, downsample: 3 },
        { level: 4, width: 2731, height: 2048, downsample: 3 },
      ],
    });
    expect(levels.map((l) => l.serverLevel)).toEqual([3, 0]);
    expect(levels[0].scale).toBeCloseTo(2731 / 8192, 9);
  });
  it('maps OpenSeadragon tiles to the proxied server tiles', () => {
    const levels = osdLevels(PYRAMID);
    const source = tileSourceOf(7, PYRAMID, levels);
    expect(source.maxLevel).toBe(3);
    expect(source.getTileUrl(0, 1, 1)).toBe('/api/pathology/slides/7/tiles/3/1/1');
    expect(source.getTileUrl(3, 15, 11)).toBe('/api/pathology/slides/7/tiles/0/15/11');
    expect(source.getLevelScale(1)).toBe(0.25);
    expect(Number.isNaN(source.getLevelScale(9))).toBe(true);
    expect(tileUrl('a/b', 0, 1, 2)).toBe('/api/pathology/slides/a%2Fb/tiles/0/1/2');
  });
});

describe('calibrated measurement', () => {
  it('measures in µm from the pixel spacing, nothing without it', () => {
    expect(lengthUm([0, 0], [300, 400], 0.25)).toBe(125);
    expect(lengthUm([0, 0], [300, 400], null)).toBeNull();
    expect(lengthUm([0, 0], [300, 400], 0)).toBeNull();
    expect(pathLengthUm([[0, 0], [100, 0], [100, 100]], 0.5)).toBe(100);
    expect(polygonAreaUm2([[0, 0], [400, 0], [400, 400], [0, 400]], 0.25)).toBe(10_000);
    expect(polygonAreaUm2([[0, 0], [1, 1]], 0.25)).toBeNull();
  });
  it('formats lengths and areas for the reader', () => {
    expect(formatLength(125)).toBe('125 µm');
    expect(formatLength(1250)).toBe('1.25 mm');
    expect(formatLength(0.5)).toBe('0.5 µm');
    expect(formatLength(null)).toBe('');
    expect(formatArea(2500)).toBe('2500 µm²');
    expect(formatArea(2_500_000)).toBe('2.5 mm²');
  });
  it('picks a nice scale bar that fits', () => {
    // 0.25 µm/px at 1:1, 140 px at most: 35 µm → 20 µm over 80 px
    expect(scaleBar(0.25, 140)).toEqual({ um: 20, px: 80, label: '20 µm' });
    // zoomed out 32×: 8 µm per screen pixel, 1120 µm at most → 1 mm
    expect(scaleBar(8, 140)).toEqual({ um: 1000, px: 125, label: '1 mm' });
    expect(scaleBar(null, 140)).toBeNull();
    const bar = scaleBar(3.3, 100);
    expect(bar && bar.px <= 100 && bar.px > 20).toBe(true);
  });
});

describe('drawing helpers', () => {
  it('thins a free-hand stroke but keeps its ends', () => {
    const stroke = [[0, 0], [1, 0], [2, 0], [10, 0], [11, 0], [20, 0], [21, 0]];
    expect(thinStroke(stroke, 5)).toEqual([[0, 0], [10, 0], [20, 0], [21, 0]]);
    expect(thinStroke([[1, 1], [2, 2]], 5)).toEqual([[1, 1], [2, 2]]);
  });
  it('clamps clicks into the slide', () => {
    expect(clampPoint(-5, 12.345, 100, 50)).toEqual([0, 12.3]);
    expect(clampPoint(500, 500, 100, 50)).toEqual([99, 49]);
  });
  it('colours the heat map from transparent to red', () => {
    const rgba = heatmapRgba([[0, 1], [0.5, 'x'], [[0.1, 0.9]]], 3, 2);
    expect(rgba.length).toBe(3 * 2 * 4);
    expect([...rgba.slice(0, 4)]).toEqual([255, 200, 0, 0]);
    expect([...rgba.slice(4, 8)]).toEqual([255, 0, 0, 170]);
    expect(rgba[11]).toBe(85);
    expect(rgba[15]).toBe(0); // not a number: nothing
    expect(rgba[19]).toBe(153); // one value per label: the strongest
  });
});
