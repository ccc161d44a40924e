// Vite build of the radiologists' front end (viewer/frontend → viewer/static).
//
// Cornerstone3D's DICOM image loader decodes in ES-module web workers and loads its
// codecs as WebAssembly, so: workers are built as ES modules, the codec packages are
// kept out of the dev-server pre-bundling (their `new URL(..., import.meta.url)` wasm
// references must stay resolvable), and dicom-parser (CommonJS) is pre-bundled.
//
// vtk.js (through Cornerstone's mesh readers) pulls in xmlbuilder2, which extends Node's
// EventEmitter: the `events` package in dependencies is its browser stand-in.
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

export default defineConfig({
  root: `${here}frontend`,
  customLogger: logger,
  base: '/',
  publicDir: false,
  build: {
    outDir: `${here}static`,
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
});
