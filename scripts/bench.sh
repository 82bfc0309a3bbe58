#!/bin/sh
# The benchmark (`npm run bench`): prepares Node.js 24, Postfix and the locked dependencies,
# then measures messages per second straight into Postfix and through mailwarden.
# It must not start the system's own Postfix; everything it runs lives in temporary folders.
set -eu
. "$(dirname "$0")/env.sh"
. "$MW_ROOT/scripts/peers.sh"
mw_install_peers
mw_install_deps
cd "$MW_ROOT"
exec node scripts/bench.ts "$@"
