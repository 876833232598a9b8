#!/usr/bin/env bash
# Apicurio Registry on 127.0.0.1 with in-memory storage: a Confluent-compatible Schema
# Registry (API under /apis/ccompat/v7) for the tests and `make run`, no Docker.
#
#   deploy/registry/registry.sh fetch|start|run|stop|status|url|home
#
# Env: REGISTRY_PORT (8081), REGISTRY_MANAGEMENT_PORT (9081, used by Apicurio 3.x only),
#      REGISTRY_DATA_DIR (<repo>/var/registry: pid file and log), REGISTRY_START_TIMEOUT_S (90),
#      REGISTRY_HEAP_OPTS, REGISTRY_JVM_OPTS (-XX:TieredStopAtLevel=1),
#      HERALD_CACHE_DIR (~/.cache/herald), REGISTRY_JAVA_HOME or JAVA_HOME.
# Every schema lives in memory: a restart starts from an empty registry.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"
VERSION="$(sed -n 's:.*<apicurio\.version>\([^<]*\)</apicurio\.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$VERSION" ]] || { echo "registry.sh: cannot read apicurio.version from $POM" >&2; exit 1; }
CACHE="${HERALD_CACHE_DIR:-$HOME/.cache/herald}"
HOME_DIR="$CACHE/apicurio-registry-$VERSION"
MARKER="$HOME_DIR/.complete"

PORT="${REGISTRY_PORT:-8081}"
MPORT="${REGISTRY_MANAGEMENT_PORT:-9081}"
TIMEOUT="${REGISTRY_START_TIMEOUT_S:-90}"
DATA="${REGISTRY_DATA_DIR:-$REPO/var/registry}"
case "$DATA" in /*) ;; *) DATA="$PWD/$DATA" ;; esac
PIDFILE="$DATA/registry.pid"
PORTFILE="$DATA/registry.port"
LOG="$DATA/registry.log"
JAVA_DIR="${REGISTRY_JAVA_HOME:-${JAVA_HOME:-}}"
JAVA="${JAVA_DIR:+$JAVA_DIR/bin/}java"
read -r -a HEAP <<<"${REGISTRY_HEAP_OPTS:--Xms64m -Xmx512m}"
# C1 only, as for the broker: on 2 shared cores it halves start-up (about 11 s -> 5.5 s).
read -r -a JVM_OPTS <<<"${REGISTRY_JVM_OPTS--XX:TieredStopAtLevel=1}"

die() { echo "registry.sh: $*" >&2; exit 1; }

# The marker holds the pom's checksum, so editing the pom (e.g. a version bump) refetches.
pom_sum() { cksum <"$POM" | cut -d' ' -f1; }
fetched() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_sum)" ]]; }

fetch() {
  fetched && return 0
  mkdir -p "$CACHE"
  (
    if command -v flock >/dev/null; then
      exec 9>"$CACHE/.registry-fetch.lock"; flock 9
      fetched && exit 0
    fi
    echo "Fetching Apicurio Registry $VERSION into $HOME_DIR ..." >&2
    tmp="$HOME_DIR.tmp.$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    out="$(mvn -q -B -f "$POM" dependency:copy-dependencies -DexcludeTransitive=true \
      -DoutputDirectory="$tmp/download" 2>&1)" || { echo "$out" >&2; die "mvn failed"; }
    archive="$(compgen -G "$tmp/download/apicurio-registry-app-*.tar.gz" | head -n1)" ||
      die "fetch produced no apicurio-registry-app archive"
    mkdir -p "$tmp/app"
    tar -xzf "$archive" -C "$tmp/app"
    rm -rf "$tmp/download"   # Maven's local repository keeps the archive
    pom_sum >"$tmp/.complete"
    rm -rf "$HOME_DIR"
    mv "$tmp" "$HOME_DIR"
  )
}

# 2.x ships <name>-runner.jar, 3.x the fast-jar layout's quarkus-run.jar.
app_jar() {
  local jar
  for jar in "$HOME_DIR/app/quarkus-run.jar" "$HOME_DIR"/app/*-runner.jar; do
    [[ -f "$jar" ]] && { echo "$jar"; return 0; }
  done
  die "no quarkus-run.jar or *-runner.jar under $HOME_DIR/app"
}

read_pid() { cat "$PIDFILE" 2>/dev/null || true; }

is_running() {
  local pid; pid="$(read_pid)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    ps -o args= -p "$pid" 2>/dev/null | grep -q 'apicurio-registry'
}

running_port() { cat "$PORTFILE" 2>/dev/null || echo "$PORT"; }
url() { echo "http://127.0.0.1:$(running_port)/apis/ccompat/v7"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ready means the Confluent-compatible API answers, not merely that the port is open.
api_answers() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
    printf 'GET /apis/ccompat/v7/subjects HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r -t 5 status <&3 && [[ "$status" == HTTP/1.?" 200"* ]]
  ) 2>/dev/null
}

java_cmd=()
set_java_cmd() {
  # Loopback only: Quarkus binds 0.0.0.0 by default, and 3.x opens a management interface.
  java_cmd=("$JAVA" "${HEAP[@]}" "${JVM_OPTS[@]}" -Djava.awt.headless=true
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT"
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$MPORT"
    -jar "$(app_jar)")
}

prepare() {
  fetch
  is_running && return 0
  port_open "$PORT" && die "port $PORT on 127.0.0.1 is already in use by another process"
  mkdir -p "$DATA"
  echo "$PORT" >"$PORTFILE"
}

start() {
  prepare
  if is_running; then
    echo "Schema registry already running (pid $(read_pid)) at $(url)"; return 0
  fi
  set_java_cmd
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
  local launcher=(nohup); command -v setsid >/dev/null && launcher=(setsid nohup)
  # shellcheck disable=SC2016  # $$/$@ are meant for the inner shell
  "${launcher[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" "${java_cmd[@]}" \
    >"$LOG" 2>&1 </dev/null &
  local t0=$SECONDS
  while :; do
    if is_running && api_answers; then
      echo "Schema registry ready after $((SECONDS - t0))s (pid $(read_pid), log $LOG)"
      echo "url=$(url)"
      return 0
    fi
    if (( SECONDS - t0 >= 2 )) && ! is_running; then
      echo "Schema registry exited during startup; last 40 log lines:" >&2
      tail -n 40 "$LOG" >&2; exit 1
    fi
    if (( SECONDS - t0 >= TIMEOUT )); then
      echo "Schema registry not ready after ${TIMEOUT}s; last 40 log lines:" >&2
      tail -n 40 "$LOG" >&2; stop >&2; exit 1
    fi
    sleep 0.2
  done
}

run() {
  prepare
  is_running && die "schema registry already running (pid $(read_pid)); stop it first"
  set_java_cmd
  echo $$ >"$PIDFILE"
  exec "${java_cmd[@]}"
}

stop() {
  if ! is_running; then rm -f "$PIDFILE"; echo "Schema registry not running"; return 0; fi
  local pid; pid="$(read_pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do is_running || break; sleep 0.25; done
  if is_running; then
    echo "Schema registry (pid $pid) ignored SIGTERM for 15s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"; echo "Schema registry stopped (pid $pid)"
}

status() {
  if is_running; then echo "Schema registry running (pid $(read_pid)) at $(url)"
  else echo "Schema registry not running"; return 1; fi
}

case "${1:-}" in
  fetch) fetch; echo "$HOME_DIR" ;;
  start) start ;;
  run) run ;;
  stop) stop ;;
  status) status ;;
  url) url ;;
  home) echo "$HOME_DIR" ;;
  *) echo "usage: $0 {fetch|start|run|stop|status|url|home}" >&2; exit 2 ;;
esac
