// Stricter type checking (noImplicitAny, strictNullChecks) of the front end, module by
// module on the way to turning it on in jsconfig.json for all of it: every module is
// checked strictly except those in NOT_YET_STRICT, which still have findings. tsc has no
// per-file strictness, so this runs the compiler over the whole program with the strict
// options and reports only what it finds in the strict modules. Run: npm run typecheck.
//
// When a module of NOT_YET_STRICT has been fixed, take it off the list (the check fails
// while a listed module is already clean, so the list only shrinks); once the list is
// empty, move the two options into jsconfig.json and delete this file.
import { dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = dirname(fileURLToPath(import.meta.url));

/** Modules with findings under the strict options (paths relative to viewer/). */
const NOT_YET_STRICT = new Set([
  'frontend/src/pages/ecg.js',
  'frontend/src/pages/report.js',
  'frontend/src/viewer/segOverlay.js',
]);

const configFile = ts.findConfigFile(here, ts.sys.fileExists, 'jsconfig.json');
if (!configFile) throw new Error('viewer/jsconfig.json is missing');
const { config, error } = ts.readConfigFile(configFile, ts.sys.readFile);
if (error) throw new Error(ts.flattenDiagnosticMessageText(error.messageText, '\n'));
const parsed = ts.parseJsonConfigFileContent(config, ts.sys, here);
const program = ts.createProgram(parsed.fileNames, {
  ...parsed.options,
  noImplicitAny: true,
  strictNullChecks: true,
});

/** @type {ts.Diagnostic[]} */
const findings = [];
const stillListed = new Set(NOT_YET_STRICT);
const clean = [];
for (const file of program.getSourceFiles()) {
  const name = relative(here, file.fileName).split('\\').join('/');
  if (!name.startsWith('frontend/')) continue; // node_modules, TypeScript's own lib files
  const diagnostics = [...program.getSyntacticDiagnostics(file), ...program.getSemanticDiagnostics(file)];
  if (NOT_YET_STRICT.has(name)) {
    stillListed.delete(name);
    if (!diagnostics.length) clean.push(name);
  } else {
    findings.push(...diagnostics);
  }
}

const host = {
  getCanonicalFileName: (/** @type {string} */ f) => f,
  getCurrentDirectory: () => here,
  getNewLine: () => '\n',
};
let failed = false;
if (findings.length) {
  process.stderr.write(ts.formatDiagnosticsWithColorAndContext(findings, host));
  process.stderr.write(`\n${findings.length} finding(s) under noImplicitAny/strictNullChecks in strict modules\n`);
  failed = true;
}
for (const name of clean) {
  process.stderr.write(`${name} is clean under the strict options: take it off NOT_YET_STRICT in typecheck_strict.js\n`);
  failed = true;
}
for (const name of stillListed) {
  process.stderr.write(`${name} is in NOT_YET_STRICT but not in the program: take it off\n`);
  failed = true;
}
process.exit(failed ? 1 : 0);
