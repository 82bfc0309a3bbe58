# Sourced by test.sh and bench.sh: mw_install_peers installs the Debian packages the
# real-peer tests and the benchmark run (Postfix, Redis, OpenSSL, Dovecot, Prometheus with
# promtool, fail2ban for fail2ban-regex) when their binaries are missing, without letting the
# package install start the system's Postfix, Redis, Dovecot, Prometheus or fail2ban.
# It must not change any other system setting, and without root it only explains what to install.
mw_install_peers() {
    mw_missing=""
    [ -x /usr/sbin/postfix ] || command -v postfix >/dev/null 2>&1 || mw_missing="$mw_missing postfix"
    [ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null 2>&1 || mw_missing="$mw_missing redis-server"
    command -v openssl >/dev/null 2>&1 || mw_missing="$mw_missing openssl"
    [ -x /usr/sbin/dovecot ] || command -v dovecot >/dev/null 2>&1 || mw_missing="$mw_missing dovecot-core"
    { [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || mw_missing="$mw_missing prometheus"
    [ -x /usr/bin/fail2ban-regex ] || command -v fail2ban-regex >/dev/null 2>&1 || mw_missing="$mw_missing fail2ban"
    [ -n "$mw_missing" ] || return 0

    printf '\n=== installing test peers:%s ===\n' "$mw_missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "The tests need these Debian packages, which are not installed:$mw_missing" >&2
        echo "Install them as root, without starting their system services, then run the tests again:" >&2
        echo "  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections" >&2
        echo "  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$mw_missing" >&2
        return 1
    fi
    # invoke-rc.d asks policy-rc.d before starting a service: exit 101 forbids it. An existing
    # policy is kept aside and put back afterwards, also when the install fails.
    (
        set -eu
        policy=/usr/sbin/policy-rc.d
        saved=""
        if [ -e "$policy" ]; then
            saved=$(mktemp)
            cp -p "$policy" "$saved"
        fi
        restore() {
            if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
        }
        trap restore EXIT
        trap 'exit 130' INT TERM HUP
        printf '#!/bin/sh\n# Present only while test peers install: start no services.\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
        # shellcheck disable=SC2086 # the package list is split on purpose
        apt-get install -y -q --no-install-recommends $mw_missing
    )
}
