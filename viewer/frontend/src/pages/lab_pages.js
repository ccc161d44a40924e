// @ts-check
// The lab area's one entry point for main.js: the page a lab route names. A county
// account (no lab_reviewer role) starting at #/lab lands on its critical values.
import { renderLabHeld } from './lab.js';
import { renderLabCritical } from './lab_critical.js';
import { renderLabCustody } from './lab_custody.js';
import { renderLabDashboard } from './lab_dashboard.js';
import { isLabReviewer } from './lab_format.js';
import { renderLabQc } from './lab_qc.js';
import { renderLabResult } from './lab_result.js';

/**
 * @param {HTMLElement} root
 * @param {import('./lab_format.js').LabRoute} r
 * @param {PageContext} ctx
 * @returns {() => void}
 */
export function renderLab(root, r, ctx) {
  switch (r.name) {
    case 'lab-critical': return renderLabCritical(root, ctx);
    case 'lab-qc': return renderLabQc(root, ctx);
    case 'lab-dashboard': return renderLabDashboard(root, ctx);
    case 'lab-result': return renderLabResult(root, r.resultId, ctx);
    case 'lab-specimen': return renderLabCustody(root, { accession: r.accession }, ctx);
    case 'lab-box': return renderLabCustody(root, { boxCode: r.boxCode }, ctx);
    default:
      return isLabReviewer(ctx.user) ? renderLabHeld(root, ctx) : renderLabCritical(root, ctx);
  }
}
