#!/bin/sh
# One node of the Redis Cluster. It announces its pod IP (new at every start) and its
# stable DNS name, which clients are given instead of IPs. A node that was in the cluster
# before (nodes.conf on its volume) may find every peer at a new IP after a full restart,
# so once up it meets each peer again by name. Arguments go on to the server.
set -eu
conf=${REDIS_CONF:-/etc/redis/redis.conf}
data=${REDIS_DATA:-/data}
if [ -s "$data/nodes.conf" ]; then
  sh "$(dirname "$0")/meet.sh" &
fi
exec redis-server "$conf" \
  --dir "$data" \
  --port "$REDIS_PORT" \
  --cluster-announce-ip "$POD_IP" \
  --cluster-announce-hostname "$POD_FQDN" \
  "$@"
