// Lint rules for the whole project: typed rules from typescript-eslint, with
// unawaited promises treated as errors (a classic bug in socket callbacks), and no
// import cycle in src/ (import-x/no-cycle).
import js from '@eslint/js';
import { createNodeResolver, importX } from 'eslint-plugin-import-x';
import tseslint from 'typescript-eslint';

export default tseslint.config(
    { ignores: ['node_modules/', '.tools/', 'data/', 'dist/'] },
    js.configs.recommended,
    ...tseslint.configs.recommendedTypeChecked,
    {
        languageOptions: {
            parserOptions: {
                projectService: { allowDefaultProject: ['*.js', 'bin/*.js'] },
                tsconfigRootDir: import.meta.dirname,
            },
        },
        rules: {
            '@typescript-eslint/no-floating-promises': 'error',
            '@typescript-eslint/no-misused-promises': 'error',
            '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
            '@typescript-eslint/only-throw-error': 'error',
        },
    },
    {
        // imports point one way (docs/architecture.md): no module may import itself back
        files: ['src/**/*.ts'],
        plugins: { 'import-x': importX },
        settings: {
            'import-x/extensions': ['.ts', '.js'],
            'import-x/parsers': { '@typescript-eslint/parser': ['.ts'] },
            'import-x/resolver-next': [createNodeResolver()],
        },
        rules: { 'import-x/no-cycle': ['error', { ignoreExternal: true }] },
    },
    {
        // node:test's describe/it return promises the runner itself awaits
        files: ['test/**/*.ts'],
        rules: {
            '@typescript-eslint/no-floating-promises': [
                'error',
                {
                    allowForKnownSafeCalls: [
                        { from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite'] },
                    ],
                },
            ],
        },
    },
    {
        files: ['**/*.js'],
        ...tseslint.configs.disableTypeChecked,
    },
);
