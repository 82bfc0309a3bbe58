#!/usr/bin/env node
// Entry point of the `mailwarden` command: loads the TypeScript CLI, which Node.js 24
// runs directly (type stripping). Holds no logic of its own.
import '../src/cli.ts';
