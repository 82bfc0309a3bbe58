#!/bin/sh
# The project's test command (`npm test`, and what CI runs): prepares Node.js 24, the
# Debian test peers (Postfix, Redis, OpenSSL) and the locked npm dependencies, then runs
# the type check, lint, format check and the whole test suite, stopping at the first failure.
# It must not start the system's own Postfix or Redis, nor change anything else outside the
# project folder except installing those packages.
set -eu
. "$(dirname "$0")/env.sh"
cd "$MW_ROOT"

step() {
    printf '\n=== %s ===\n' "$*"
}

# Debian packages the real-peer tests need, by the binary that shows each is there.
missing=""
[ -x /usr/sbin/postfix ] || command -v postfix >/dev/null 2>&1 || missing="$missing postfix"
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"

if [ -n "$missing" ]; then
    step "installing test peers:$missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "The tests need these Debian packages, which are not installed:$missing" >&2
        echo "Install them as root, without starting their system services, then run the tests again:" >&2
        echo "  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections" >&2
        echo "  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing" >&2
        exit 1
    fi
    # Forbid service starts while the packages install (invoke-rc.d honours policy-rc.d),
    # so the system's Postfix and Redis stay stopped; an existing policy is put back afterwards.
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then
        saved=$(mktemp)
        cp -p "$policy" "$saved"
    fi
    restore_policy() {
        if [ -n "$saved" ]; then
            mv -f "$saved" "$policy"
        else
            rm -f "$policy"
        fi
    }
    trap restore_policy EXIT
    trap 'exit 130' INT TERM
    printf '#!/bin/sh\n# Installed for the duration of a package install: start no services.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends $missing
    restore_policy
    trap - EXIT INT TERM
fi

step "installing npm dependencies"
mw_install_deps

step "type check (tsc)"
tsc -p tsconfig.json

step "lint (eslint)"
eslint .

step "format check (prettier)"
prettier --check .

step "tests (node --test)"
node --test --test-timeout=120000 'test/**/*.test.ts'
