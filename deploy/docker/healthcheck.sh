#!/bin/bash
# Container health check for the gatehouse image (Dockerfile HEALTHCHECK): GET /health on the
# admin listener and expect 200. The slim image has no curl, so this speaks HTTP/1.1 over
# bash's /dev/tcp. The port (and the address, unless it is a wildcard) come from
# GATEHOUSE_ADMIN_LISTEN, the variable the default gateway.yaml reads for server.admin_listen.
# Exit 0 healthy, 1 unhealthy (what Docker expects).
set -u

addr=${GATEHOUSE_ADMIN_LISTEN:-127.0.0.1:9091}
addr=${addr%%,*}       # a list: the first address
port=${addr##*:}
host=${addr%:*}
host=${host#[}
host=${host%]}
case $host in
  '' | 0.0.0.0 | '::') host=127.0.0.1 ;;
esac

if ! exec 3<>"/dev/tcp/$host/$port"; then
  echo "unhealthy: cannot connect to $host:$port" >&2
  exit 1
fi
printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
status=""
IFS= read -r -t 2 status <&3 || true
exec 3>&-
case $status in
  'HTTP/1.'?' 200 '* | 'HTTP/1.'?' 200') exit 0 ;;
esac
echo "unhealthy: admin /health on $host:$port answered '${status%$'\r'}'" >&2
exit 1
