// Vite build of the radiologists' front end (viewer/frontend → viewer/static).
//
// `vite build --mode test` (npm run build:test) builds the same front end into
// viewer/static-test with the browser tests' hook (`window.__rdc`): __RDC_TEST_HOOKS__ is
// `true` there and `false` in every other mode, so the production bundle drops the hook's
// code as dead code (tests/test_frontend_build.py checks both bundles).
//
// Cornerstone3D's DICOM image loader decodes in ES-module web workers and loads its
// codecs as WebAssembly, so: workers are built as ES modules, the codec packages are
// kept out of the dev-server pre-bundling (their `new URL(..., import.meta.url)` wasm
// references must stay resolvable), and dicom-parser (CommonJS) is pre-bundled.
//
// vtk.js (through Cornerstone's mesh readers) pulls in xmlbuilder2, which extends Node's
// EventEmitter: the `events` package in dependencies is its browser stand-in.
//
// The API docs (`/docs`, admins only) use Swagger UI from swagger-ui-dist, copied into
// static/docs so that they work on a hospital network without internet access.
import { copyFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createLogger, defineConfig } from 'vite';

const here = fileURLToPath(new URL('.', import.meta.url));

// The Emscripten codec glue mentions fs/path/url for Node only; Vite's notice that it
// stubs them for the browser is expected, so it is not repeated on every build.
const logger = createLogger();
const warn = logger.warn.bind(logger);
logger.warn = (msg, options) => {
  if (msg.includes('has been externalized for browser compatibility')) return;
  warn(msg, options);
};

// The files of swagger-ui-dist that viewer/frontend_routes.py serves under /docs/.
const SWAGGER_UI_FILES = ['swagger-ui-bundle.js', 'swagger-ui.css', 'favicon-32x32.png'];

/** @param {string} outDir */
function swaggerUiAssets(outDir) {
  return {
      name: 'rdc-swagger-ui-assets',
      apply: /** @type {const} */ ('build'),
      writeBundle() {
        const from = `${here}node_modules/swagger-ui-dist/`;
        const to = `${outDir}/docs/`;
        mkdirSync(to, { recursive: true });
        for (const name of SWAGGER_UI_FILES) copyFileSync(from + name, to + name);
      },
  };
}

export default defineConfig(({ mode }) => {
  const testHooks = mode === 'test';
  const outDir = `${here}${testHooks ? 'static-test' : 'static'}`;
  return {
  root: `${here}frontend`,
  plugins: [swaggerUiAssets(outDir)],
  customLogger: logger,
  define: {
    __RDC_TEST_HOOKS__: JSON.stringify(testHooks),
  },
  base: '/',
  publicDir: false,
  build: {
    outDir,
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    minify: !process.env.RDC_NO_MINIFY,
    // vtk.js and the codecs are big by nature; the viewer chunk loads only on the study page.
    chunkSizeWarningLimit: 4000,
    assetsInlineLimit: 0, // no data: URLs, so the CSP needs no data: for scripts or wasm
  },
  worker: {
    format: 'es',
  },
  optimizeDeps: {
    exclude: [
      '@cornerstonejs/dicom-image-loader',
      '@cornerstonejs/codec-charls',
      '@cornerstonejs/codec-libjpeg-turbo-8bit',
      '@cornerstonejs/codec-libjxl',
      '@cornerstonejs/codec-openjpeg',
      '@cornerstonejs/codec-openjph',
    ],
    include: ['dicom-parser'],
  },
  server: {
    // `npm run dev` against a running `rdc web` on the default port.
    proxy: {
      '/api': 'http://127.0.0.1:8000',
      '/dicom-web': 'http://127.0.0.1:8000',
      '/share': 'http://127.0.0.1:8000',
    },
  },
  };
});
