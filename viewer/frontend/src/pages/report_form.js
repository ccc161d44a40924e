// @ts-check
// The report form's pure rules, apart from the DOM so that they are unit-tested
// (frontend/tests/report_form.test.js): when a version is signed, which required fields
// are still open, where a local copy of typed text is kept and what of it differs.

/** A placeholder the reader must resolve (core/reports/templates.py PLACEHOLDER). */
export const PLACEHOLDER = /\{\{[\s\S]*?\}\}/;

/** Until the server has it, the text typed into a report version is also kept in this
 * browser, under this prefix + user + study + version: a session that ends, a closed tab
 * or a crash does not lose it, and reopening the report puts it back. */
export const LOCAL_PREFIX = 'rdc.report-draft';

/**
 * A signed version (final, amended or signed, or with a signing time) is read-only.
 * @param {{ signed_at?: string | null, state?: string } | null | undefined} version
 */
export function isSigned(version) {
  return Boolean(version?.signed_at) || ['final', 'amended', 'signed'].includes(version?.state ?? '');
}

/**
 * The localStorage key of the text typed into one version of one study's report by one user.
 * @param {string | null | undefined} username
 * @param {string} studyId
 * @param {{ number?: number } | null | undefined} version
 */
export function draftKey(username, studyId, version) {
  return `${LOCAL_PREFIX}:${username ?? ''}:${studyId}:v${version?.number ?? 1}`;
}

/**
 * A local copy as stored by the report panel ({fields, at}), or null when the text is
 * missing, not JSON, or not such a copy.
 * @param {string | null} text
 * @returns {{ fields: Record<string, string>, at?: string } | null}
 */
export function parseDraft(text) {
  try {
    const data = JSON.parse(text ?? 'null');
    return data && typeof data.fields === 'object' ? data : null;
  } catch {
    return null;
  }
}

/**
 * The fields of a local copy that are on the form and hold other text than it does.
 * @param {Record<string, string>} saved
 * @param {Map<string, string>} onForm field name → text on the form now
 * @returns {Array<[string, string]>}
 */
export function differingFields(saved, onForm) {
  return Object.entries(saved).filter(([name, value]) => onForm.has(name) && onForm.get(name) !== value);
}

/**
 * Required fields that are empty or still hold a {{placeholder}}; they block signing.
 * @param {string[]} required
 * @param {(name: string) => unknown} textOf the field's text (form first, then the version)
 */
export function unresolvedFields(required, textOf) {
  return required.filter((name) => {
    const text = String(textOf(name) ?? '');
    return !text.trim() || PLACEHOLDER.test(text);
  });
}

/**
 * A field's textarea height in rows: one more than its lines, 2 to 12.
 * @param {unknown} value
 */
export function fieldRows(value) {
  return Math.min(12, Math.max(2, String(value ?? '').split('\n').length + 1));
}
