// @ts-check
// The study page's priors: the list of the patient's earlier studies, and the prior shown
// side by side in a second viewport (with its own series choice), warned about when it
// was matched by name and birth date only.
import { ApiError, api } from '../../api.js';
import { formatDate, h, replace } from '../../dom.js';
import { createStackViewer, loadSeriesImageIds } from '../../viewer/cornerstone.js';
import { isWeakMatch, matchText, priorTitle } from './format.js';
import { isImageSeries, seg, sortSeries } from './state.js';
import { errorText } from './viewport.js';

/** @typedef {import('./state.js').StudyState} StudyState */
/** @typedef {import('./state.js').Study} Study */
/** @typedef {import('./state.js').Series} Series */
/** @typedef {import('./state.js').Prior} Prior */
/** @typedef {import('./state.js').PriorView} PriorView */
/** @typedef {import('./viewport.js').Viewport} Viewport */

/**
 * The priors panel; a prior opens beside the main viewport (closed with state.disposers).
 * @param {StudyState} state
 * @param {Viewport} viewport
 * @param {{ renderPresets: () => void }} toolbar
 * @returns {{ el: HTMLElement, render: (study: Study) => void }}
 */
export function mountPriors(state, viewport, toolbar) {
  const el = h('section', { class: 'panel', testid: 'priors' });

  function closePrior() {
    if (!state.prior) return;
    const { viewer: v, panel } = state.prior;
    state.prior = null;
    v?.destroy();
    panel.remove();
    viewport.setActive(false);
    viewport.el.classList.remove('side-by-side');
    state.viewer?.fit(); // the current image gets its whole width back
  }
  state.disposers.push(closePrior);

  /**
   * Show prior `p` (an item of study.priors) in a second viewport beside the current one.
   * @param {Prior} p
   */
  async function openPrior(p) {
    closePrior();
    const weak = isWeakMatch(p);
    const priorEl = /** @type {HTMLDivElement} */ (h('div', {
      class: 'viewport', testid: 'prior-viewport-image', tabindex: '0',
      'aria-label': 'Prior study viewport: wheel or arrow keys scroll, left drag uses the selected tool',
    }));
    const pos = h('span', { testid: 'prior-viewport-position' });
    const wl = h('span', { testid: 'prior-viewport-wl' });
    const status = h('span', { class: 'status', testid: 'prior-viewport-status' }, 'Loading prior…');
    const seriesSelect = /** @type {HTMLSelectElement} */ (
      h('select', { testid: 'prior-series', 'aria-label': 'Prior series', hidden: true }));
    const close = h('button', {
      class: 'btn small', type: 'button', testid: 'prior-close', title: 'Close the prior', 'aria-label': 'Close the prior',
    }, '✕ Close');
    const title = h('span', { class: 'strong', testid: 'prior-title' }, priorTitle(p));
    const panel = h('section', {
      class: weak ? 'prior-panel weak' : 'prior-panel', testid: 'prior-viewport',
      dataset: { studyId: String(p.study_id), match: String(p.match ?? '') },
    },
    h('header', { class: 'prior-header' },
      h('div', { class: 'prior-head-row' }, h('span', { class: 'badge' }, 'PRIOR'), title, seriesSelect, close),
      weak ? h('div', { class: 'prior-warning-banner', role: 'alert', testid: 'prior-warning' },
        '⚠ matched by name and birth date only: check it is the same patient') : null),
    h('div', { class: 'viewport-wrap' }, priorEl,
      h('div', { class: 'viewport-overlay' }, pos, wl, status)));
    /** @type {PriorView} */
    const current = { viewer: null, panel, studyId: p.study_id, modality: '' };
    state.prior = current;
    close.addEventListener('click', closePrior);
    priorEl.addEventListener('pointerdown', () => viewport.setActive(true));
    priorEl.addEventListener('focus', () => viewport.setActive(true));
    viewport.el.append(panel);
    viewport.el.classList.add('side-by-side');
    viewport.setActive(false);
    state.viewer?.fit(); // half the width now: fit the current image into it again

    const update = () => {
      const v = current.viewer;
      if (!v) return;
      const { index, count } = v.position();
      replace(pos, count ? `Im ${index + 1} / ${count}` : '');
      const w = v.getWindow();
      replace(wl, w ? `W ${Math.round(w.width)} L ${Math.round(w.center)}` : '');
    };
    try {
      const other = await api('GET', `/api/studies/${seg(p.study_id)}`);
      if (state.disposed || state.prior !== current) return;
      replace(title, priorTitle(p, other));
      /** @type {Series[]} */
      const images = sortSeries(other.series).filter(isImageSeries);
      if (!images.length) throw new Error('the prior has no image series');
      const viewer = await createStackViewer(priorEl, {
        onRendered: () => {
          if (priorEl.dataset.rendered !== 'true') priorEl.dataset.rendered = 'true';
          update();
        },
      });
      if (state.disposed || state.prior !== current) { viewer.destroy(); return; }
      current.viewer = viewer;
      if (__RDC_TEST_HOOKS__ && state.hook) {
        state.hook.getPriorViewport = () => (state.prior === current ? current.viewer?.viewport ?? null : null);
        state.hook.priorImageExtent = () => (state.prior === current ? current.viewer?.imageExtent() ?? null : null);
      }
      if (state.viewer?.primaryTool) viewer.setPrimaryTool(state.viewer.primaryTool);
      /** @param {Series} s */
      const show = async (s) => {
        replace(status, 'Loading…');
        try {
          const ids = await loadSeriesImageIds(other.study_uid, s.series_uid, s.instances);
          if (state.disposed || state.prior !== current) return;
          if (!ids.length) throw new Error('this series has no displayable images');
          priorEl.dataset.seriesUid = s.series_uid;
          current.modality = String(s.modality ?? '');
          if (state.priorActive && state.prior === current) toolbar.renderPresets();
          await viewer.setStack(ids, Math.floor(ids.length / 2));
          replace(status, '');
          update();
        } catch (err) {
          console.warn('viewer: cannot show prior series', err);
          replace(status, `Cannot display this series: ${errorText(err)}`);
        }
      };
      if (images.length > 1) {
        for (const [i, s] of images.entries()) {
          seriesSelect.append(h('option', { value: String(i) },
            `${s.modality ?? ''} #${s.number ?? ''} ${s.description ?? ''}`.trim()));
        }
        seriesSelect.hidden = false;
        seriesSelect.addEventListener('change', () => show(images[Number(seriesSelect.value)]));
      }
      await show(images[0]);
    } catch (err) {
      if (state.prior !== current) return;
      replace(status, `Cannot open the prior: ${err instanceof ApiError ? err.message : errorText(err)}`);
    }
  }

  /** @param {Study} study */
  function render(study) {
    const priors = study.priors ?? [];
    const list = h('ul', { class: 'priors' });
    for (const p of priors) {
      const weak = isWeakMatch(p);
      list.append(h('li', { class: weak ? 'prior weak' : 'prior', testid: 'prior-item', dataset: { match: String(p.match ?? '') } },
        h('a', {
          href: `#/study/${seg(p.study_id)}`, testid: 'prior-open', title: 'Show side by side (Ctrl+click: open the study)',
          /** @param {MouseEvent} event */
          onClick: (event) => {
            if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
            event.preventDefault();
            openPrior(p);
          },
        }, `${formatDate(p.date)} ${p.description ?? ''}`),
        h('span', { class: 'muted small' }, ` · ${p.site_id ?? ''} · ${matchText(p)}`),
        weak ? h('div', { class: 'warning', role: 'note', testid: 'prior-warning' },
          '⚠ Matched by name and birth date only — confirm this is the same patient before comparing.') : null));
    }
    replace(el, h('h3', {}, `Priors (${priors.length})`),
      priors.length ? list : h('p', { class: 'muted' }, 'No prior studies found.'));
  }

  return { el, render };
}
