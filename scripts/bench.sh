#!/bin/sh
# The benchmark (`npm run bench`, see docs/performance.md): prepares Node.js 24, Redis and the
# locked dependencies, then runs scripts/bench.ts with the arguments given (`npm run bench -- --help`).
# It must not start the system's Redis or Postfix; everything it runs lives in temporary folders
# and is stopped before it exits.
set -eu
. "$(dirname "$0")/env.sh"
. "$MW_ROOT/scripts/peers.sh"
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || mw_install_peers
mw_install_deps
cd "$MW_ROOT"
exec node scripts/bench.ts "$@"
