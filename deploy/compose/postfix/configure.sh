#!/bin/sh
# Applies the deployment guide's Postfix configuration (the files of docs/postfix/) to a stock
# Debian Postfix configuration folder, as docs/deploy-postfix.md steps 2, 3 and 5 say, plus an
# example delivery of MAIL_DOMAIN into one Maildir. Used by the Postfix container of the
# docker-compose example, and by the tests on a temporary folder. Running it again changes
# nothing more.
# Usage: configure.sh CONFIG_DIR SNIPPETS_DIR
set -eu
conf=$1
snippets=$2
domain=${MAIL_DOMAIN:-example.com}
hostname=${MAIL_HOSTNAME:-mx.example.com}

[ -f "$conf/main.cf" ] || cp /usr/share/postfix/main.cf.debian "$conf/main.cf"

# Example delivery for the compose set-up: every address of $domain into /var/mail/vhosts/catchall/.
postconf -c "$conf" -e \
    "myhostname = $hostname" \
    "mydestination = localhost" \
    "inet_interfaces = loopback-only" \
    "inet_protocols = ipv4" \
    "maillog_file = /dev/stdout" \
    "virtual_mailbox_domains = $domain" \
    "virtual_mailbox_base = /var/mail/vhosts" \
    "virtual_mailbox_maps = static:catchall/" \
    "virtual_uid_maps = static:5000" \
    "virtual_gid_maps = static:5000"

# Step 2: the main.cf lines, one parameter per line.
grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$snippets/main.cf" | while IFS= read -r line; do
    postconf -c "$conf" -e "$line"
done
cp "$snippets/mailwarden_header_checks" "$conf/mailwarden_header_checks"

# Steps 3 and 5: Postfix's own listeners on 25, 587 and 465 are turned off (mailwarden owns the
# ports), and the loopback smtpd that mailwarden forwards to is added.
postconf -c "$conf" -M# smtp/inet submission/inet submissions/inet smtps/inet 2>/dev/null
postconf -c "$conf" -Me "127.0.0.1:10026/inet=$(grep -v '^#' "$snippets/master.cf" | tr -s ' \n' ' ')"
