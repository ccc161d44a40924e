// @ts-check
// Study page: series, viewer, AI findings, priors, report. The parts live in study/
// (state.js: what they share; toolbar.js, series_list.js, viewport.js, header.js,
// findings.js, priors.js: each mounts its part); this module puts them on the page.
import { ApiError, api } from '../api.js';
import { h, replace } from '../dom.js';
import { loadSegmentations } from '../viewer/segOverlay.js';
import { renderReportPanel } from './report.js';
import { mountFindings } from './study/findings.js';
import { mountHeader } from './study/header.js';
import { mountPriors } from './study/priors.js';
import { mountSeriesList } from './study/series_list.js';
import { createStudyState, seg } from './study/state.js';
import { mountToolbar } from './study/toolbar.js';
import { mountViewport } from './study/viewport.js';

export { CT_PRESETS, presetsFor } from './study/keys.js';

/**
 * Study page: series, viewer, AI findings, priors, report. Returns a cleanup function.
 * @param {HTMLElement} root
 * @param {string} studyId
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderStudy(root, studyId, { navigate }) {
  const state = createStudyState(studyId, navigate);

  const error = h('p', { class: 'error', role: 'alert', testid: 'study-error', hidden: true });
  state.showError = (text) => {
    replace(error, text);
    error.hidden = !text;
  };
  // The viewport and the toolbar need each other: the viewport asks for new presets and
  // the default tool through this link, which the toolbar fills in once it exists.
  /** @type {import('./study/viewport.js').ToolbarLink} */
  const link = { renderPresets: () => {}, selectTool: () => {} };
  const viewport = mountViewport(state, link);
  const toolbar = mountToolbar(state, {
    controls: viewport.segControls, toggleable: viewport.segToggleable, toggle: viewport.toggleSeg,
  });
  link.renderPresets = toolbar.renderPresets;
  link.selectTool = toolbar.selectTool;
  const header = mountHeader(state);
  const seriesList = mountSeriesList(viewport);
  const findings = mountFindings(state);
  const priors = mountPriors(state, viewport, toolbar);
  const reportBox = h('section', { class: 'panel report', testid: 'report-panel' });

  root.append(
    header.el,
    error,
    h('div', { class: 'study-layout' },
      h('aside', { class: 'series-pane' }, h('h3', {}, 'Series'), seriesList.el),
      h('section', { class: 'viewer-pane' }, toolbar.el, viewport.el),
      h('aside', { class: 'side-pane' }, findings.el, priors.el, reportBox)),
  );

  (async () => {
    try {
      const study = await api('GET', `/api/studies/${seg(studyId)}`);
      if (state.disposed) return;
      header.render(study);
      findings.render(study);
      priors.render(study);
      state.disposers.push(renderReportPanel(reportBox, study));
      /** @type {import('./study/state.js').Series[]} */
      const segSeries = (study.series ?? []).filter(
        (/** @type {import('./study/state.js').Series} */ x) => x.kind === 'seg' && (x.instances ?? []).length);
      if (segSeries.length) viewport.setSegments(loadSegmentations(study.study_uid, segSeries));
      seriesList.render(study);
    } catch (err) {
      header.fail();
      state.showError(err instanceof ApiError ? err.message : String(err));
    }
  })();

  return () => {
    state.disposed = true;
    for (const d of state.disposers) d();
    viewport.destroy();
    state.viewer?.destroy();
    state.viewer = null;
  };
}
