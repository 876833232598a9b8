#!/usr/bin/env bash
# `make run`: the local broker, an SMTP capture server and Herald, in the foreground.
# With LOCAL_REGISTRY=1 it also starts the local schema registry and points Herald at it
# (HERALD_REGISTRY__URL), for routing tables with `encoding: confluent`.
# Ctrl-C (or SIGTERM) stops Herald first, so it drains and commits, then the rest.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${VENV:-.venv}/bin
OUTBOX_PORT=${OUTBOX_PORT:-2525}
export HERALD_KAFKA__BOOTSTRAP_SERVERS=${HERALD_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}
export HERALD_SMTP__HOST=${HERALD_SMTP__HOST:-127.0.0.1}
export HERALD_SMTP__PORT=${HERALD_SMTP__PORT:-$OUTBOX_PORT}
# The capture server speaks plain SMTP on loopback; a real relay keeps the verified-TLS default.
export HERALD_SMTP__TLS=${HERALD_SMTP__TLS:-none}
export HERALD_LOG__FORMAT=${HERALD_LOG__FORMAT:-console}
# Optional mail carries signed one-click unsubscribe links; this key is for the local run only.
export HERALD_LINKS__UNSUBSCRIBE_SECRET=${HERALD_LINKS__UNSUBSCRIBE_SECRET:-local-development-only}
export HERALD_POLICY__ADDRESS_KEY=${HERALD_POLICY__ADDRESS_KEY:-local-development-only-address-key}

outbox_pid=""
started_broker=""
started_registry=""
cleanup() {
  trap - INT TERM EXIT
  [ -n "$outbox_pid" ] && kill "$outbox_pid" 2>/dev/null && wait "$outbox_pid" 2>/dev/null
  [ -n "$started_broker" ] && deploy/kafka/broker.sh stop
  [ -n "$started_registry" ] && deploy/registry/registry.sh stop
  echo "herald-local: stopped"
}
trap cleanup INT TERM EXIT

if ! deploy/kafka/broker.sh status >/dev/null 2>&1; then
  deploy/kafka/broker.sh start
  started_broker=1
fi
registry_line=""
if [ "${LOCAL_REGISTRY:-}" = 1 ]; then
  if ! deploy/registry/registry.sh status >/dev/null 2>&1; then
    deploy/registry/registry.sh start
    started_registry=1
  fi
  export HERALD_REGISTRY__URL=${HERALD_REGISTRY__URL:-$(deploy/registry/registry.sh url)}
  registry_line="  Schema registry  ${HERALD_REGISTRY__URL}   (in memory; log: var/registry/registry.log)"
fi
"$BIN/herald" topics --partitions 3
"$BIN/herald" outbox --port "$OUTBOX_PORT" --directory var/outbox &
outbox_pid=$!

cat <<BANNER

  Herald is running locally
  ─────────────────────────
  Kafka broker     ${HERALD_KAFKA__BOOTSTRAP_SERVERS}   (log: var/kafka/broker.log)
  SMTP capture     127.0.0.1:${OUTBOX_PORT}   -> var/outbox/*.eml
${registry_line:+$registry_line
}  Metrics          http://127.0.0.1:${HERALD_HTTP__PORT:-9464}/metrics   (/healthz, /readyz)
  Public listener  http://127.0.0.1:${HERALD_PUBLIC__PORT:-8080}/   (one-click unsubscribe, /feedback/<provider>)
  Suppressions     herald suppress list · herald suppress add <address> · herald forget <user id>
  Try it           make demo   (in another terminal)
  Stop             Ctrl-C

BANNER
# Not exec: the trap must run after Herald exits to stop the outbox and the broker.
"$BIN/herald" run &
herald_pid=$!
trap 'kill -TERM $herald_pid 2>/dev/null' INT TERM
wait "$herald_pid" || true
wait "$herald_pid" 2>/dev/null || true
