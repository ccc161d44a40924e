// Vitest for the front end's pure modules (frontend/tests): plain Node, no browser; the
// pages' DOM behaviour is covered by the Playwright tests in tests/test_browser_*.py.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['frontend/tests/**/*.test.js'],
    environment: 'node',
  },
});
