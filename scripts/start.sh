#!/bin/sh
# The quick-start command (`npm start`): prepares Node.js 24 and the locked dependencies,
# writes the JavaScript production runs into dist/ (`npm run build`, under a second), then runs
# `mailwarden serve` with the given arguments. It must not install anything else.
set -eu
. "$(dirname "$0")/env.sh"
mw_install_deps
node "$MW_ROOT/scripts/build.js" >/dev/null || echo "npm start: the build failed; mailwarden strips the types as it starts" >&2
exec node "$MW_ROOT/bin/mailwarden.js" serve "$@"
