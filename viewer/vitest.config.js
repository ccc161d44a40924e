// Vitest for the front end's pure modules (frontend/tests): plain Node, no browser; the
// pages' DOM behaviour is covered by the Playwright tests in tests/test_browser_*.py.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // As in the test build (vite.config.js): the modules' test hooks are there.
  define: { __RDC_TEST_HOOKS__: 'true' },
  test: {
    include: ['frontend/tests/**/*.test.js'],
    environment: 'node',
  },
});
