#!/bin/sh
# Entrypoint of the Postfix container of the docker-compose example: configures Postfix as the
# deployment guide says (configure.sh), prepares its chroot and aliases as Debian's own service
# does, then runs the command (Postfix in the foreground).
set -eu
/usr/local/lib/mailwarden-postfix/configure.sh /etc/postfix /usr/local/lib/mailwarden-postfix/snippets
newaliases
/usr/lib/postfix/configure-instance.sh -
exec "$@"
