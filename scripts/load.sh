#!/bin/sh
# The load run (`npm run load`): prepares Node.js 24, Postfix and the locked dependencies, then
# sends 10,000 messages over 100 sessions through mailwarden into a real Postfix, opens 5,000
# idle connections, and prints throughput, memory per connection and leak checks (docs/reliability.md).
# It must not start the system's own Postfix or Redis; everything it runs lives in temporary folders.
set -eu
. "$(dirname "$0")/env.sh"
. "$MW_ROOT/scripts/peers.sh"
mw_install_peers
mw_install_deps
cd "$MW_ROOT"
exec node scripts/load.ts "$@"
