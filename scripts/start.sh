#!/bin/sh
# The quick-start command (`npm start`): prepares Node.js 24 and the locked dependencies,
# then runs `mailwarden serve` with the given arguments. It must not install anything else.
set -eu
. "$(dirname "$0")/env.sh"
mw_install_deps
exec node "$MW_ROOT/bin/mailwarden.js" serve "$@"
