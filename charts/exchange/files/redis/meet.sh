#!/bin/sh
# Meet every peer of $REDIS_NODES ("host:port ...") at the address its name has now.
# Meeting a node already known only refreshes its address, so this is safe to repeat.
set -u
tries=0
until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
  tries=$((tries + 1))
  # Loading a large AOF can take minutes; a server that never answers is gone.
  [ "$tries" -lt 600 ] || exit 1
  sleep 1
done
for node in $REDIS_NODES; do
  [ "$node" = "$POD_FQDN:$REDIS_PORT" ] && continue
  host=${node%:*}
  port=${node##*:}
  ip=""
  tries=0
  while [ -z "$ip" ] && [ "$tries" -lt 60 ]; do
    ip=$(getent hosts "$host" | awk '{ print $1; exit }')
    [ -n "$ip" ] || sleep 2
    tries=$((tries + 1))
  done
  if [ -n "$ip" ]; then
    redis-cli -p "$REDIS_PORT" cluster meet "$ip" "$port" >/dev/null
  else
    echo "meet: $host does not resolve" >&2
  fi
done
