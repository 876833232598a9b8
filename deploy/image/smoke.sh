#!/usr/bin/env bash
# `make image-smoke`: run the image `make image` built against the project's own broker and
# SMTP capture server, on loopback ports of this machine. The image must start as uid 10001,
# answer /healthz and /readyz, pass its own HEALTHCHECK command, mail every example event
# (`herald demo` waits for every outcome), and stop on SIGTERM with status 0.
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG=${IMAGE_TAG:-localhost/herald:dev}
BIN=${VENV:-.venv}/bin
buildah=(buildah --storage-driver vfs)
work=$(mktemp -d)
port() { "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DATA_DIR=$work/kafka KAFKA_NUM_PARTITIONS=3
KAFKA_PORT=$(port) KAFKA_CONTROLLER_PORT=$(port)
smtp_port=$(port) http_port=$(port) public_port=$(port)
# Throw-away keys for this run (the image holds none); `herald demo` below needs them too.
export HERALD_LINKS__UNSUBSCRIBE_SECRET=image-smoke-only-unsubscribe-key
export HERALD_POLICY__ADDRESS_KEY=image-smoke-only-address-key-0123456789
ctr="" outbox="" runner=""

cleanup() {
  set +e
  [ -n "$runner" ] && kill "$runner" 2>/dev/null && wait "$runner" 2>/dev/null
  [ -n "$outbox" ] && kill "$outbox" 2>/dev/null && wait "$outbox" 2>/dev/null
  deploy/kafka/broker.sh stop >/dev/null 2>&1 || true
  [ -n "$ctr" ] && "${buildah[@]}" rm "$ctr" >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "image-smoke: $*" >&2; [ -f "$work/herald.log" ] && tail -20 "$work/herald.log" >&2; exit 1; }

# Output to files: background processes must not hold the caller's stdout and stderr open.
deploy/kafka/broker.sh start >"$work/broker.out" 2>&1 || { cat "$work/broker.out" >&2; fail "no broker"; }
"$BIN/herald" outbox --port "$smtp_port" --directory "$work/outbox" >"$work/outbox.log" 2>&1 &
outbox=$!

ctr=$("${buildah[@]}" from --quiet "$TAG")
run=("${buildah[@]}" run --isolation chroot
  --env "HERALD_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
  --env "HERALD_KAFKA__TRANSACTIONAL_ID=image-smoke-0"
  --env "HERALD_HTTP__PORT=$http_port" --env "HERALD_PUBLIC__PORT=$public_port"
  --env "HERALD_LINKS__UNSUBSCRIBE_SECRET=$HERALD_LINKS__UNSUBSCRIBE_SECRET"
  --env "HERALD_POLICY__ADDRESS_KEY=$HERALD_POLICY__ADDRESS_KEY"
  --env "HERALD_SMTP__HOST=127.0.0.1" --env "HERALD_SMTP__PORT=$smtp_port"
  --env "HERALD_SMTP__TLS=none"
  "$ctr" --)
"${run[@]}" herald topics --partitions 3 >/dev/null
"${run[@]}" herald run >"$work/herald.log" 2>&1 &
runner=$!

get() { "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null; }
for _ in $(seq 60); do get "http://127.0.0.1:$http_port/readyz" && break; sleep 2; done
get "http://127.0.0.1:$http_port/readyz" || fail "/readyz not 200 within 120 s"
get "http://127.0.0.1:$http_port/healthz" || fail "/healthz not 200"

# The image's own HEALTHCHECK command, as the runtime would run it, inside the container.
mapfile -t check < <("${buildah[@]}" inspect --type image "$TAG" | "$BIN/python" -c \
  'import json, sys; print(*json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"][1:], sep="\n")')
[ "${#check[@]}" -gt 0 ] || fail "no HEALTHCHECK in the image"
"${run[@]}" "${check[@]}" || fail "HEALTHCHECK command failed"

HERALD_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT "$BIN/herald" demo >"$work/demo.log" \
  || { cat "$work/demo.log" >&2; fail "herald demo did not get every outcome back"; }
outcomes=$(grep -c '^outcome' "$work/demo.log")
mails=$(find "$work/outbox" -name '*.eml' | wc -l)

# buildah run does not forward signals: SIGTERM goes to Herald itself, as a runtime sends it to
# the container's first process. Herald is the interpreter below the runner's chroot helper.
descendants() { local c; for c in $(ps -o pid= --ppid "$1"); do echo "$c"; descendants "$c"; done; }
herald_pid=""
for pid in $(descendants "$runner"); do
  case $(ps -o args= -p "$pid") in "/opt/herald/bin/python3 /opt/herald/bin/herald run") herald_pid=$pid ;; esac
done
[ -n "$herald_pid" ] || fail "Herald's process not found under the runner"
[ "$(ps -o uid= -p "$herald_pid" | tr -d ' ')" = 10001 ] || fail "Herald does not run as uid 10001"
kill -TERM "$herald_pid"
status=0
wait "$runner" || status=$?
runner=""
[ "$status" = 0 ] || fail "Herald exited with status $status on SIGTERM"
grep -q '"herald stopped"' "$work/herald.log" || fail "no 'herald stopped' line"
echo "image-smoke: $TAG ran as uid 10001: /healthz and /readyz 200, HEALTHCHECK passed," \
  "$outcomes outcomes and $mails mails for the example events, exit 0 on SIGTERM"
