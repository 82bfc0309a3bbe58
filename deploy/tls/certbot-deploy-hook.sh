#!/bin/sh
# certbot deploy hook for mailwarden (docs/deploy-postfix.md, "TLS certificates"): after certbot
# renewed the certificate of MAILWARDEN_TLS_NAME, copies it where mailwarden reads it, readable
# by the mailwarden group only, and reloads mailwarden (SIGHUP) so new connections get the new
# certificate; open sessions keep theirs, nothing is interrupted. A broken pair is refused and
# logged, and the previous certificate stays in use.
# Installed in step 1: install -m 0755 certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/mailwarden
set -eu
name=${MAILWARDEN_TLS_NAME:-mx.example.com}
dir=${MAILWARDEN_ETC:-/etc/mailwarden}

# certbot sets RENEWED_LINEAGE (the live folder) and RENEWED_DOMAINS (space-separated).
case " ${RENEWED_DOMAINS:-} " in
*" $name "*) ;;
*) exit 0 ;;
esac

install -m 0640 -o root -g mailwarden "$RENEWED_LINEAGE/fullchain.pem" "$dir/tls.crt.new"
install -m 0640 -o root -g mailwarden "$RENEWED_LINEAGE/privkey.pem" "$dir/tls.key.new"
mv -f "$dir/tls.crt.new" "$dir/tls.crt"
mv -f "$dir/tls.key.new" "$dir/tls.key"
# Only a running mailwarden is reloaded: before the switch-over (the hook is installed in step 1,
# before the unit) or while it is stopped there is nothing to reload, and that is no error.
if systemctl is-active --quiet mailwarden.service; then
    systemctl reload mailwarden.service
fi
