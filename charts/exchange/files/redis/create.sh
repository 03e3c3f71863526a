#!/bin/sh
# Create the cluster once: wait until every node of $REDIS_NODES ("host:port ...")
# answers, then, if no slot is assigned yet, make masters with $REDIS_REPLICAS replicas
# each. On a cluster that exists already it changes nothing. Ends when every node
# reports cluster_state:ok.
set -eu
addresses=""
for node in $REDIS_NODES; do
  host=${node%:*}
  port=${node##*:}
  until redis-cli -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG; do
    echo "waiting for $node"
    sleep 2
  done
  # redis-cli --cluster create takes addresses, not names.
  ip=$(getent hosts "$host" | awk '{ print $1; exit }')
  addresses="$addresses $ip:$port"
done
first=${REDIS_NODES%% *}
assigned=$(redis-cli -h "${first%:*}" -p "${first##*:}" cluster info \
  | tr -d '\r' | sed -n 's/^cluster_slots_assigned://p')
if [ "$assigned" = "0" ]; then
  # shellcheck disable=SC2086 # one argument per address
  redis-cli --cluster create $addresses --cluster-replicas "$REDIS_REPLICAS" --cluster-yes
fi
for node in $REDIS_NODES; do
  until redis-cli -h "${node%:*}" -p "${node##*:}" cluster info | grep -q '^cluster_state:ok'; do
    echo "waiting for $node to see the cluster ok"
    sleep 2
  done
done
echo "cluster ok"
