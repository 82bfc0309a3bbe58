#!/bin/sh
# The project's test command (`npm test`, and what CI runs): prepares Node.js 24, the
# Debian test peers (Postfix, Redis, Dovecot, Prometheus, OpenSSL) and the locked npm
# dependencies, then runs the type check, lint, format check, the build and the whole test suite,
# stopping at the first failure. It must not start the system services of those packages,
# and changes nothing outside the project folder except installing them.
set -eu
. "$(dirname "$0")/env.sh"
. "$MW_ROOT/scripts/peers.sh"
cd "$MW_ROOT"

step() {
    printf '\n=== %s ===\n' "$*"
}

mw_install_peers

step "npm dependencies"
mw_install_deps

step "type check: tsc -p tsconfig.json"
tsc -p tsconfig.json

step "lint: eslint ."
eslint .

step "format: prettier --check ."
prettier --check .

step "build: node scripts/build.js (the JavaScript bin/mailwarden.js runs)"
node scripts/build.js

step "tests: node --test"
# Each test file's results reach the runner whole (test/helpers/blocking-stdio.ts says why).
node --import "$MW_ROOT/test/helpers/blocking-stdio.ts" --test --test-force-exit --test-timeout=120000 'test/**/*.test.ts'
