// @ts-check
// The study page's series list: a thumbnail per series; an image series opens in the
// viewport, an ECG on the ECG screen; the first image series is shown at once.
import { h } from '../../dom.js';
import { DICOMWEB_BASE } from '../../viewer/cornerstone.js';
import { isImageSeries, isWaveform, seg, sortSeries } from './state.js';

/** @typedef {import('./state.js').Study} Study */
/** @typedef {import('./state.js').Series} Series */
/** @typedef {import('./viewport.js').Viewport} Viewport */

/**
 * The thumbnail of an image series (its middle instance), or a tile naming its kind.
 * @param {Study} study
 * @param {Series} s
 */
function thumbnail(study, s) {
  const instances = s.instances ?? [];
  const thumbSop = instances[Math.floor(instances.length / 2)];
  if (!isImageSeries(s) || !thumbSop) {
    return h('div', { class: 'thumb-kind' }, isWaveform(s) ? 'ECG' : String(s.kind ?? '').toUpperCase());
  }
  const thumbBase = `${DICOMWEB_BASE}/studies/${seg(study.study_uid)}/series/${seg(s.series_uid)}/instances/${seg(thumbSop)}`;
  // Orthanc's DICOMweb answers /rendered (scaled by `viewport`); /thumbnail is the fallback.
  const img = /** @type {HTMLImageElement} */ (
    h('img', { src: `${thumbBase}/rendered?viewport=128,128`, alt: '', loading: 'lazy', width: '96', height: '96' }));
  // Fall back to the thumbnail resource once, then to a blank tile.
  img.addEventListener('error', () => {
    if (!img.dataset.fallback) {
      img.dataset.fallback = '1';
      img.src = `${thumbBase}/thumbnail`;
    } else img.classList.add('broken');
  });
  return img;
}

/**
 * @param {Viewport} viewport
 * @returns {{ el: HTMLElement, render: (study: Study) => void }}
 */
export function mountSeriesList(viewport) {
  const el = h('ul', { class: 'series-list', testid: 'series-list' });

  /**
   * @param {Study} study
   * @param {Series} s
   * @param {Element} item
   */
  function show(study, s, item) {
    for (const li of el.children) li.classList.toggle('active', li === item);
    viewport.showSeries(study, s);
  }

  /** @param {Study} study */
  function render(study) {
    const series = sortSeries(study.series);
    /** @type {{ s: Series, li: HTMLElement } | null} */
    let first = null;
    el.replaceChildren();
    for (const s of series) {
      const viewable = isImageSeries(s);
      const waveform = isWaveform(s);
      const li = h('li', {
        class: viewable || waveform ? 'series' : 'series disabled', testid: 'series-item',
        dataset: { seriesUid: s.series_uid, kind: waveform ? 'waveform' : s.kind ?? 'image' },
        tabindex: viewable || waveform ? '0' : null,
        title: viewable ? 'Show this series'
          : waveform ? 'A waveform: open it on the ECG screen' : `${s.kind} objects are not shown in the image viewer`,
      },
      thumbnail(study, s),
      h('div', { class: 'series-label' },
        h('span', { class: 'strong' }, `${s.modality ?? ''} #${s.number ?? ''}`),
        h('span', {}, s.description ?? ''),
        h('span', { class: 'muted small' }, `${(s.instances ?? []).length} img`)));
      if (viewable) {
        li.addEventListener('click', () => show(study, s, li));
        li.addEventListener('keydown', (/** @type {KeyboardEvent} */ e) => { if (e.key === 'Enter') show(study, s, li); });
        first = first ?? { s, li };
      } else if (waveform) {
        li.addEventListener('click', () => viewport.openEcg(study, false));
        li.addEventListener('keydown', (/** @type {KeyboardEvent} */ e) => { if (e.key === 'Enter') viewport.openEcg(study, false); });
      }
      el.append(li);
    }
    if (first) show(study, first.s, first.li);
    else if (series.some(isWaveform)) viewport.openEcg(study, true);
    else viewport.setStatus('No image series in this study.');
  }

  return { el, render };
}

