#!/usr/bin/env bash
# Single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1, no Docker.
#
#   deploy/kafka/broker.sh fetch|start|run|stop|status|reset|libdir
#
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DATA_DIR (<repo>/var/kafka),
#      KAFKA_NUM_PARTITIONS (1), KAFKA_START_TIMEOUT_S (90), KAFKA_HEAP_OPTS,
#      KAFKA_JVM_OPTS (-XX:TieredStopAtLevel=1), HERALD_CACHE_DIR (~/.cache/herald), JAVA_HOME.
#
# Optional second listener, SASL_SSL with SCRAM-SHA-512, beside the plain one (off unless
# KAFKA_SASL_SSL_PORT is set): KAFKA_SASL_SSL_PORT, KAFKA_SASL_USER (herald),
# KAFKA_SASL_PASSWORD (required with it). The TLS certificate comes from a throw-away CA made
# with openssl in <data dir>/tls/ (clients trust ca.pem); the SCRAM credential is written when
# the data directory is formatted, so another user or password needs a `reset` first.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"
LOG4J_CONF="$HERE/log4j2.properties"
KAFKA_VERSION="$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$KAFKA_VERSION" ]] || { echo "broker.sh: cannot read kafka.version from $POM" >&2; exit 1; }
CACHE="${HERALD_CACHE_DIR:-$HOME/.cache/herald}"
LIBDIR="$CACHE/kafka-$KAFKA_VERSION/libs"
MARKER="$LIBDIR/.complete"

PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-1}"
TIMEOUT="${KAFKA_START_TIMEOUT_S:-90}"
DATA="${KAFKA_DATA_DIR:-$REPO/var/kafka}"
case "$DATA" in /*) ;; *) DATA="$PWD/$DATA" ;; esac  # Kafka needs absolute log.dirs
PROPS="$DATA/server.properties"
SASL_PORT="${KAFKA_SASL_SSL_PORT:-}"
SASL_USER="${KAFKA_SASL_USER:-herald}"
TLS="$DATA/tls"
SCRAM_MARKER="$DATA/scram.user"
PIDFILE="$DATA/broker.pid"
LOG="$DATA/broker.log"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
read -r -a HEAP <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
# C1 only: the C2 compiler spent 0.2-0.3 of a core for the broker's first minutes of load,
# taken from Herald on a shared 2-core machine; C1 starts a second sooner, on half the CPU.
# Set KAFKA_JVM_OPTS="" for the JVM's default (tiered) compilation.
read -r -a JVM_OPTS <<<"${KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1}"

die() { echo "broker.sh: $*" >&2; exit 1; }

# The marker holds the pom's checksum, so editing the pom (e.g. a version bump) refetches.
pom_sum() { cksum <"$POM" | cut -d' ' -f1; }
fetched() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_sum)" ]]; }

fetch() {
  fetched && return 0
  mkdir -p "$(dirname "$LIBDIR")"
  # Subshell: the lock fd and the trap must not leak into the java process started later.
  (
    # Serialise concurrent fetches (e.g. parallel test runs) when flock is available.
    if command -v flock >/dev/null; then
      exec 9>"$(dirname "$LIBDIR")/.fetch.lock"; flock 9
      fetched && exit 0
    fi
    echo "Fetching Kafka $KAFKA_VERSION jars into $LIBDIR ..." >&2
    tmp="$LIBDIR.tmp.$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    # Output shown only on failure: even with -q, mvn prints stray ANSI resets.
    out="$(mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1)" || { echo "$out" >&2; die "mvn failed"; }
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "fetch produced no kafka jar"
    pom_sum >"$tmp/.complete"
    # Complete dir is swapped in by rename: an interrupted fetch never looks complete.
    rm -rf "$LIBDIR"
    mv "$tmp" "$LIBDIR"
  )
}

read_pid() { cat "$PIDFILE" 2>/dev/null || true; }

# Checks the command line too, so a stale pid file whose pid got reused is not "running".
is_running() {
  local pid; pid="$(read_pid)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    ps -o args= -p "$pid" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# The addresses the running instance really uses (env may differ from when it started).
addr() { sed -n 's|^advertised.listeners=PLAINTEXT://\([^,]*\).*|\1|p' "$PROPS" 2>/dev/null || true; }
sasl_addr() { sed -n 's|^advertised.listeners=.*SASL_SSL://\([^,]*\).*|\1|p' "$PROPS" 2>/dev/null || true; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A throw-away CA and a broker certificate for 127.0.0.1 and localhost, kept across restarts
# (clients keep trusting ca.pem) and made anew when less than a day of validity is left.
make_tls() {
  command -v openssl >/dev/null || die "KAFKA_SASL_SSL_PORT needs openssl (make system-deps)"
  if [[ -f "$TLS/broker-keystore.pem" ]] &&
    openssl x509 -checkend 86400 -noout -in "$TLS/broker.pem" >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$TLS"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$TLS/ca.key" -out "$TLS/ca.pem" -days 30 \
    -subj "/CN=Herald test CA" -addext "basicConstraints=critical,CA:true" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$TLS/broker.key" -out "$TLS/broker.csr" \
    -subj "/CN=127.0.0.1" 2>/dev/null
  openssl x509 -req -in "$TLS/broker.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
    -CAcreateserial -out "$TLS/broker.pem" -days 30 -extfile <(printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth") 2>/dev/null
  # Kafka's PEM key store: the unencrypted PKCS#8 key, then the certificate chain.
  cat "$TLS/broker.key" "$TLS/broker.pem" "$TLS/ca.pem" >"$TLS/broker-keystore.pem"
  chmod 600 "$TLS/ca.key" "$TLS/broker.key" "$TLS/broker-keystore.pem"
}

write_props() {
  mkdir -p "$DATA/logs"
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT"
  local advertised="PLAINTEXT://127.0.0.1:$PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "$SASL_PORT" ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$SASL_PORT"
    advertised+=",SASL_SSL://127.0.0.1:$SASL_PORT"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  # Rewritten on every start so env overrides apply; the data itself lives in $DATA/logs.
  cat >"$PROPS" <<EOF
# Generated by deploy/kafka/broker.sh -- edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$DATA/logs
num.partitions=$NUM_PARTITIONS
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
# Single node: every internal topic must have RF=1 / min.isr=1 or it is never created.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Defaults are 50 partitions each; creating them dominates first-use latency.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
share.coordinator.state.topic.num.partitions=4
# Dev box: keep disk and memory small.
log.retention.hours=24
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=16777216
EOF
  if [[ -n "$SASL_PORT" ]]; then
    cat >>"$PROPS" <<EOF
# SASL_SSL listener: SCRAM-SHA-512 over TLS. Broker-to-broker and controller traffic stay plain.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker-keystore.pem
EOF
  fi
}

format_storage() {
  if [[ -f "$DATA/logs/meta.properties" ]]; then
    if [[ -n "$SASL_PORT" && "$(cat "$SCRAM_MARKER" 2>/dev/null)" != "$SASL_USER" ]]; then
      die "$DATA was formatted without the SCRAM user '$SASL_USER'; run '$0 reset' first"
    fi
    return 0
  fi
  local id="" scram=()
  # 22-char base64url UUID; a leading '-' would be parsed as a CLI option, so retry.
  while [[ -z "$id" || "$id" == -* ]]; do
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  done
  if [[ -n "$SASL_PORT" ]]; then
    # StorageTool's [name=…,password=…] syntax has no escaping. The password is on this one
    # command line for the second the format takes: a throw-away credential, not a real one.
    [[ "$SASL_USER" =~ ^[A-Za-z0-9._-]+$ && "${KAFKA_SASL_PASSWORD:-}" =~ ^[A-Za-z0-9._~-]+$ ]] ||
      die "KAFKA_SASL_SSL_PORT needs KAFKA_SASL_USER and KAFKA_SASL_PASSWORD made of [A-Za-z0-9._~-]"
    scram=(--add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$KAFKA_SASL_PASSWORD]")
  fi
  echo "Formatting $DATA/logs (cluster id $id)" >&2
  "$JAVA" -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$LIBDIR/*" \
    kafka.tools.StorageTool format -t "$id" -c "$PROPS" --standalone "${scram[@]}" >&2
  if [[ -n "$SASL_PORT" ]]; then echo "$SASL_USER" >"$SCRAM_MARKER"; fi
}

prepare() {
  fetch
  is_running && return 0
  local port
  for port in "$PORT" "$CPORT" $SASL_PORT; do
    port_open "$port" && die "port $port on 127.0.0.1 is already in use by another process"
  done
  if [[ -n "$SASL_PORT" ]]; then make_tls; fi
  write_props
  format_storage
}

java_cmd=()
set_java_cmd() {
  java_cmd=("$JAVA" "${HEAP[@]}" "${JVM_OPTS[@]}" -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$LIBDIR/*" kafka.Kafka "$PROPS")
}

start() {
  prepare
  if is_running; then
    echo "Kafka already running (pid $(read_pid)) on $(addr)"; return 0
  fi
  set_java_cmd
  # Fresh log per start so an old "Kafka Server started" line cannot fake readiness.
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
  local launcher=(nohup); command -v setsid >/dev/null && launcher=(setsid nohup)
  # The inner shell writes its own pid and execs java, so the pid file is java's pid
  # regardless of whether setsid had to fork.
  # shellcheck disable=SC2016  # $$/$@ are meant for the inner shell
  "${launcher[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" "${java_cmd[@]}" \
    >"$LOG" 2>&1 </dev/null &
  local t0=$SECONDS
  while :; do
    if is_running && grep -q 'Kafka Server started' "$LOG" && port_open "$PORT" &&
      { [[ -z "$SASL_PORT" ]] || port_open "$SASL_PORT"; }; then
      echo "Kafka ready on 127.0.0.1:$PORT after $((SECONDS - t0))s (pid $(read_pid), log $LOG)"
      echo "bootstrap.servers=127.0.0.1:$PORT"
      if [[ -n "$SASL_PORT" ]]; then
        echo "sasl_ssl=127.0.0.1:$SASL_PORT user=$SASL_USER ssl.ca.location=$TLS/ca.pem"
      fi
      return 0
    fi
    # Give the launcher a moment to write the pid file before treating it as dead.
    if (( SECONDS - t0 >= 2 )) && ! is_running; then
      echo "Kafka exited during startup; last 40 log lines:" >&2; tail -n 40 "$LOG" >&2; exit 1
    fi
    if (( SECONDS - t0 >= TIMEOUT )); then
      echo "Kafka not ready after ${TIMEOUT}s; last 40 log lines:" >&2; tail -n 40 "$LOG" >&2
      stop >&2; exit 1
    fi
    sleep 0.5
  done
}

run() {
  prepare
  is_running && die "Kafka already running (pid $(read_pid)); stop it first"
  set_java_cmd
  echo $$ >"$PIDFILE"   # exec keeps this pid, so stop/status work for the foreground broker too
  exec "${java_cmd[@]}"
}

stop() {
  if ! is_running; then rm -f "$PIDFILE"; echo "Kafka not running"; return 0; fi
  local pid; pid="$(read_pid)"
  kill -TERM "$pid" 2>/dev/null || true
  # SIGTERM triggers a controlled shutdown, which can take a few seconds. is_running, not
  # kill -0: an exited-but-unreaped (zombie) java must count as stopped.
  for _ in $(seq 1 60); do is_running || break; sleep 0.5; done
  if is_running; then
    echo "Kafka (pid $pid) ignored SIGTERM for 30s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"; echo "Kafka stopped (pid $pid)"
}

status() {
  if is_running; then
    local sasl; sasl="$(sasl_addr)"
    echo "Kafka running (pid $(read_pid)) on $(addr)${sasl:+, SASL_SSL on $sasl (CA $TLS/ca.pem)}"
  else echo "Kafka not running"; return 1; fi
}

reset() {
  # Guard against a mistyped KAFKA_DATA_DIR: only delete what looks like our data dir.
  [[ ! -e "$DATA" || -f "$PROPS" ]] || die "refusing to delete $DATA (no server.properties in it)"
  stop; rm -rf "$DATA"; echo "Removed $DATA"
}

case "${1:-}" in
  fetch) fetch; echo "$LIBDIR" ;;
  start) start ;;
  run) run ;;
  stop) stop ;;
  status) status ;;
  reset) reset ;;
  libdir) echo "$LIBDIR" ;;
  *) echo "usage: $0 {fetch|start|run|stop|status|reset|libdir}" >&2; exit 2 ;;
esac
