#!/bin/sh
# The fault run (`npm run faults`): prepares Node.js 24, Postfix, Redis and the locked dependencies,
# then drives mail through mailwarden into a real Postfix while each fault strikes and prints
# the report per fault (docs/reliability.md).
# It must not start the system's own Postfix or Redis; everything it runs lives in temporary folders.
set -eu
. "$(dirname "$0")/env.sh"
. "$MW_ROOT/scripts/peers.sh"
mw_install_peers
mw_install_deps
cd "$MW_ROOT"
exec node scripts/faults.ts "$@"
