#!/usr/bin/env bash
# Single-node KRaft Apache Kafka broker for development and CI, run from the Maven Central jars
# (no Docker, no Apache download site needed; Java 17+ and Maven required).
#
# Usage: deploy/kafka/kafka.sh {start|stop|restart|status|bootstrap|logs [-f] [LINES]}
#
#   start      Start the broker in the background (idempotent: reuses a running, answering broker),
#              fetching the jars and formatting storage on first use. Prints 127.0.0.1:PORT on stdout.
#   stop       SIGTERM the broker, SIGKILL after STREAM_LEARNER_KAFKA_STOP_TIMEOUT (30 s).
#   status     Exit 0 if the broker is running (and say so), 1 otherwise.
#   bootstrap  Print the bootstrap address 127.0.0.1:PORT.
#   logs       Tail server.log (-f to follow).
#
# Topics: .venv/bin/stream-learner topics create --bootstrap-server "$(deploy/kafka/kafka.sh bootstrap)" \
#   --topic NAME --partitions N  (or --config FILE: the input, snapshot and dead-letter topics it names).
#
# Environment:
#   STREAM_LEARNER_KAFKA_HOME             jars, data, logs, pid file (default: <repo>/.cache/kafka)
#   STREAM_LEARNER_KAFKA_PORT             client port (default 39092)
#   STREAM_LEARNER_KAFKA_CONTROLLER_PORT  controller port (default: client port + 1)
#   STREAM_LEARNER_KAFKA_START_TIMEOUT    seconds to wait for "Kafka Server started" (default 120)
#   STREAM_LEARNER_KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   STREAM_LEARNER_KAFKA_JVM_OPTS         extra JVM options, appended
#   JAVA                                  java binary (default: $JAVA_HOME/bin/java or java on PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

KAFKA_HOME_DIR="${STREAM_LEARNER_KAFKA_HOME:-$REPO_ROOT/.cache/kafka}"
PORT="${STREAM_LEARNER_KAFKA_PORT:-39092}"
CONTROLLER_PORT="${STREAM_LEARNER_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
START_TIMEOUT="${STREAM_LEARNER_KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT="${STREAM_LEARNER_KAFKA_STOP_TIMEOUT:-30}"

LIB_DIR="$KAFKA_HOME_DIR/lib"
DATA_DIR="$KAFKA_HOME_DIR/data"
LOG_DIR="$KAFKA_HOME_DIR/logs"
CONF_DIR="$KAFKA_HOME_DIR/config"
PID_FILE="$KAFKA_HOME_DIR/kafka.pid"
PORT_FILE="$KAFKA_HOME_DIR/kafka.port"
LOCK_FILE="$KAFKA_HOME_DIR/kafka.lock"
SERVER_LOG="$LOG_DIR/server.log"
PROPS="$CONF_DIR/server.properties"
READY_LINE="Kafka Server started"
MAIN_CLASS="kafka.Kafka"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

java_bin() {
    if [[ -n "${JAVA:-}" ]]; then
        printf '%s\n' "$JAVA"
    elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        printf '%s\n' "$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "java not found (install a JDK 17+ or set JAVA_HOME)"
    fi
}

validate_port() {
    local name="$1" value="$2"
    [[ "$value" =~ ^[0-9]+$ ]] && ((value > 0 && value < 65536)) || die "$name must be a TCP port, got '$value'"
}

# Serialise start/stop between concurrent callers (e.g. several pytest workers).
take_lock() {
    mkdir -p "$KAFKA_HOME_DIR"
    exec 9>"$LOCK_FILE"
    if command -v flock >/dev/null 2>&1; then
        flock -w 300 9 || die "timed out waiting for $LOCK_FILE"
    fi
}

# PID of the broker started by this script from this home, if that process is still alive; else nothing.
running_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: the process must be our java running kafka.Kafka with our config.
    if [[ -r "/proc/$pid/cmdline" ]]; then
        local cmdline
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
        [[ "$cmdline" == *" $MAIN_CLASS "* && "$cmdline" == *"$PROPS"* ]] || return 1
    fi
    printf '%s\n' "$pid"
}

running_port() {
    if [[ -f "$PORT_FILE" ]]; then
        tr -dc '0-9' <"$PORT_FILE"
    else
        printf '%s' "$PORT"
    fi
}

port_open() {
    # Bash's /dev/tcp: succeeds when something accepts connections on 127.0.0.1:$1.
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

log_size() {
    if [[ -f "$SERVER_LOG" ]]; then wc -c <"$SERVER_LOG" | tr -d ' '; else echo 0; fi
}

# Has the readiness line been logged since byte offset $1 of server.log?
started_since() {
    local offset="$1" size
    [[ -f "$SERVER_LOG" ]] || return 1
    size="$(log_size)"
    if ((size < offset)); then offset=0; fi # rolled over meanwhile
    tail -c "+$((offset + 1))" "$SERVER_LOG" | grep -qF "$READY_LINE"
}

show_log_tail() {
    local lines="${1:-60}"
    if [[ -f "$SERVER_LOG" ]]; then
        log "last $lines lines of $SERVER_LOG:"
        tail -n "$lines" "$SERVER_LOG" >&2
    fi
    if [[ -s "$LOG_DIR/kafkaServer.out" ]]; then
        log "last 20 lines of $LOG_DIR/kafkaServer.out:"
        tail -n 20 "$LOG_DIR/kafkaServer.out" >&2
    fi
}

pom_hash() { sha256sum "$SCRIPT_DIR/pom.xml" | cut -d' ' -f1; }

ensure_jars() {
    local want have=""
    want="$(pom_hash)"
    [[ -f "$LIB_DIR/.pom.sha256" ]] && have="$(cat "$LIB_DIR/.pom.sha256")"
    if [[ "$have" == "$want" ]] && compgen -G "$LIB_DIR/kafka_2.13-*.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found; it is needed once to fetch the Kafka jars"
    log "fetching Kafka jars from Maven Central into $LIB_DIR ..."
    local tmp="$KAFKA_HOME_DIR/lib.tmp.$$"
    rm -rf "$tmp"
    local out
    if ! out="$(mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" 2>&1)"; then
        printf '%s\n' "$out" >&2
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "no kafka_2.13 jar was fetched"; }
    printf '%s\n' "$want" >"$tmp/.pom.sha256"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

render_config() {
    mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR"
    sed -e "s|@PORT@|$PORT|g" \
        -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
        -e "s|@DATA_DIR@|$DATA_DIR|g" \
        "$SCRIPT_DIR/server.properties.template" >"$PROPS.tmp"
    mv "$PROPS.tmp" "$PROPS"
}

jvm_base_opts() {
    printf '%s\n' -Xms256m -Xmx768m \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        "-Dkafka.logs.dir=$LOG_DIR" \
        "-Dlog4j2.configurationFile=$SCRIPT_DIR/log4j2.properties"
}

ensure_formatted() {
    [[ -f "$DATA_DIR/meta.properties" ]] && return 0
    local java cluster_id
    java="$(java_bin)"
    local -a opts
    mapfile -t opts < <(jvm_base_opts)
    cluster_id="$("$java" "${opts[@]}" -Xms64m -Xmx256m -cp "$LIB_DIR/*" kafka.tools.StorageTool random-uuid)" ||
        die "kafka.tools.StorageTool random-uuid failed (java: $java)"
    cluster_id="$(printf '%s\n' "$cluster_id" | tail -n 1)"
    [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid printed '$cluster_id'"
    log "formatting $DATA_DIR (cluster id $cluster_id)"
    "$java" "${opts[@]}" -Xms64m -Xmx256m -cp "$LIB_DIR/*" kafka.tools.StorageTool \
        format -t "$cluster_id" -c "$PROPS" -g >&2 || die "StorageTool format failed"
}

cmd_start() {
    validate_port STREAM_LEARNER_KAFKA_PORT "$PORT"
    validate_port STREAM_LEARNER_KAFKA_CONTROLLER_PORT "$CONTROLLER_PORT"
    take_lock

    local pid
    if pid="$(running_pid)"; then
        local rport
        rport="$(running_port)"
        if [[ "$rport" != "$PORT" ]]; then
            die "a broker from $KAFKA_HOME_DIR is already running on port $rport (pid $pid), not $PORT; stop it first"
        fi
        if port_open "$PORT"; then
            log "reusing running broker (pid $pid)"
            echo "127.0.0.1:$PORT"
            return 0
        fi
        # Alive but not answering (still starting?): wait for readiness like a fresh start would.
        log "broker (pid $pid) is running but not answering yet; waiting"
        wait_ready "$pid" 0
        echo "127.0.0.1:$PORT"
        return 0
    fi

    if [[ -f "$PID_FILE" ]]; then
        log "removing stale pid file (pid $(cat "$PID_FILE") is gone)"
        rm -f "$PID_FILE"
    fi
    for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_open "$p"; then
            die "port $p on 127.0.0.1 is already in use by another process (set STREAM_LEARNER_KAFKA_PORT)"
        fi
    done

    ensure_jars
    render_config
    ensure_formatted

    local java offset
    java="$(java_bin)"
    offset="$(log_size)"
    local -a opts
    mapfile -t opts < <(jvm_base_opts)
    if [[ -n "${STREAM_LEARNER_KAFKA_JVM_OPTS:-}" ]]; then
        local -a extra
        read -r -a extra <<<"$STREAM_LEARNER_KAFKA_JVM_OPTS"
        opts+=("${extra[@]}")
    fi

    log "starting Kafka on 127.0.0.1:$PORT (controller $CONTROLLER_PORT), home $KAFKA_HOME_DIR"
    # setsid + nohup: own session, immune to the caller's SIGHUP, so it outlives the calling shell.
    # The inner shell writes its own pid and then execs java, so the pid file holds the JVM's pid.
    # fd 9 (the start/stop lock) is closed so the broker does not hold the lock.
    # shellcheck disable=SC2016 # $$ and "$@" are for the inner shell
    nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launch \
        "$PID_FILE" "$java" "${opts[@]}" -cp "$LIB_DIR/*" "$MAIN_CLASS" "$PROPS" \
        </dev/null >"$LOG_DIR/kafkaServer.out" 2>&1 9>&- &
    printf '%s\n' "$PORT" >"$PORT_FILE"

    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$PID_FILE" ]] && break
        sleep 0.1
    done
    [[ -s "$PID_FILE" ]] || die "launcher did not write $PID_FILE"
    pid="$(cat "$PID_FILE")"
    wait_ready "$pid" "$offset"
    echo "127.0.0.1:$PORT"
}

# Wait for READY_LINE in server.log after byte offset $2 while process $1 lives.
wait_ready() {
    local pid="$1" offset="$2" start=$SECONDS
    while true; do
        if started_since "$offset" && port_open "$PORT"; then
            log "broker ready (pid $pid) after $((SECONDS - start)) s"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail 80
            rm -f "$PID_FILE"
            die "broker process $pid exited during startup"
        fi
        if ((SECONDS - start >= START_TIMEOUT)); then
            show_log_tail 80
            log "stopping the broker that did not become ready"
            stop_pid "$pid"
            die "broker not ready after ${START_TIMEOUT} s"
        fi
        sleep 0.5
    done
}

stop_pid() {
    local pid="$1" start=$SECONDS
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - start >= STOP_TIMEOUT)); then
            log "broker (pid $pid) still running after ${STOP_TIMEOUT} s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
    rm -f "$PID_FILE"
}

cmd_stop() {
    take_lock
    local pid
    if pid="$(running_pid)"; then
        log "stopping broker (pid $pid)"
        stop_pid "$pid"
        log "stopped"
    else
        rm -f "$PID_FILE"
        log "not running"
    fi
}

cmd_status() {
    local pid rport
    if pid="$(running_pid)"; then
        rport="$(running_port)"
        if port_open "$rport"; then
            echo "running: pid $pid, 127.0.0.1:$rport, home $KAFKA_HOME_DIR"
        else
            echo "running (not answering yet): pid $pid, 127.0.0.1:$rport, home $KAFKA_HOME_DIR"
        fi
        return 0
    fi
    echo "not running (home $KAFKA_HOME_DIR)"
    return 1
}

cmd_bootstrap() {
    if running_pid >/dev/null; then
        echo "127.0.0.1:$(running_port)"
    else
        echo "127.0.0.1:$PORT"
    fi
}

cmd_logs() {
    local follow=0 lines=100
    for arg in "$@"; do
        case "$arg" in
            -f | --follow) follow=1 ;;
            *[!0-9]* | '') die "usage: kafka.sh logs [-f] [LINES]" ;;
            *) lines="$arg" ;;
        esac
    done
    [[ -f "$SERVER_LOG" ]] || die "no log yet at $SERVER_LOG"
    if ((follow)); then
        exec tail -n "$lines" -F "$SERVER_LOG"
    fi
    tail -n "$lines" "$SERVER_LOG"
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart)
            cmd_stop
            exec 9>&-
            cmd_start
            ;;
        status) cmd_status ;;
        bootstrap) cmd_bootstrap ;;
        logs) cmd_logs "$@" ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
