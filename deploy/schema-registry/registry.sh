#!/usr/bin/env bash
# A real Confluent-compatible Schema Registry for development and CI, without Docker: Apicurio
# Registry's application (io.apicurio:apicurio-registry-app, the "all" tarball from Maven Central),
# in-memory storage, serving the Confluent REST API under /apis/ccompat/v7. Java 17 and Maven.
#
# Usage: deploy/schema-registry/registry.sh {start|stop|status|url}
#
#   start   Start it in the background (reuses a running one), fetching and unpacking the tarball
#           on first use. Prints the Confluent-compatible URL, http://127.0.0.1:PORT/apis/ccompat/v7.
#   stop    SIGTERM it, SIGKILL after 30 s.
#   status  Exit 0 if it answers (and say so), 1 otherwise.
#   url     Print the URL.
#
# Environment:
#   STREAM_LEARNER_REGISTRY_HOME           tarball, application, log, pid file (default: <repo>/.cache/schema-registry)
#   STREAM_LEARNER_REGISTRY_PORT           HTTP port (default 38081)
#   STREAM_LEARNER_REGISTRY_START_TIMEOUT  seconds to wait until it answers (default 180)
#   JAVA                                   java binary (default: $JAVA_HOME/bin/java or java on PATH)
#
# Apicurio 3.0.9 is the newest release that runs on Java 17 (3.1 and later need Java 21).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
VERSION="3.0.9"
ARTIFACT="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all"
HOME_DIR="${STREAM_LEARNER_REGISTRY_HOME:-$REPO_ROOT/.cache/schema-registry}"
PORT="${STREAM_LEARNER_REGISTRY_PORT:-38081}"
START_TIMEOUT="${STREAM_LEARNER_REGISTRY_START_TIMEOUT:-180}"
APP_DIR="$HOME_DIR/app-$VERSION"
JAR="$APP_DIR/apicurio-registry-app-$VERSION-runner.jar"
PID_FILE="$HOME_DIR/registry.pid"
LOG_FILE="$HOME_DIR/registry.log"
URL="http://127.0.0.1:$PORT/apis/ccompat/v7"

log() { printf 'registry.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

java_bin() {
    if [[ -n "${JAVA:-}" ]]; then echo "$JAVA"
    elif [[ -n "${JAVA_HOME:-}" ]]; then echo "$JAVA_HOME/bin/java"
    else command -v java || die "no java on PATH (Java 17 needed)"; fi
}

answers() { curl -sf -o /dev/null --max-time 2 "$URL/subjects"; }

running_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$JAR"* ]] || return 1
    echo "$pid"
}

ensure_app() {
    [[ -f "$JAR" ]] && return 0
    command -v mvn >/dev/null 2>&1 || die "mvn not found (Maven fetches $ARTIFACT)"
    log "fetching $ARTIFACT (about 110 MB, once)"
    mkdir -p "$HOME_DIR/download"
    mvn -q -B dependency:copy -Dartifact="$ARTIFACT" -DoutputDirectory="$HOME_DIR/download" >&2 \
        || die "could not fetch $ARTIFACT"
    rm -rf "$APP_DIR.tmp" && mkdir -p "$APP_DIR.tmp"
    tar -xzf "$HOME_DIR/download/apicurio-registry-app-$VERSION-all.tar.gz" -C "$APP_DIR.tmp"
    rm -rf "$APP_DIR" && mv "$APP_DIR.tmp" "$APP_DIR"
    rm -f "$HOME_DIR/download/apicurio-registry-app-$VERSION-all.tar.gz"
}

cmd_start() {
    mkdir -p "$HOME_DIR"
    exec 9>"$HOME_DIR/registry.lock"
    flock -w 600 9 || die "timed out waiting for the start lock"
    if running_pid >/dev/null && answers; then
        log "reusing running registry (pid $(running_pid))"
        echo "$URL"
        return 0
    fi
    answers && die "port $PORT answers but is not this registry (set STREAM_LEARNER_REGISTRY_PORT)"
    ensure_app
    log "starting Apicurio Registry $VERSION on 127.0.0.1:$PORT"
    # Own session (outlives the caller); fd 9 (the lock) closed so that the registry does not hold it.
    nohup setsid "$(java_bin)" -Xms64m -Xmx384m -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" -Dquarkus.log.level=WARN \
        -jar "$JAR" </dev/null >"$LOG_FILE" 2>&1 9>&- &
    echo $! >"$PID_FILE"
    local pid start=$SECONDS
    pid="$(cat "$PID_FILE")"
    until answers; do
        kill -0 "$pid" 2>/dev/null || { tail -40 "$LOG_FILE" >&2; die "the registry exited during start"; }
        if ((SECONDS - start >= START_TIMEOUT)); then
            tail -40 "$LOG_FILE" >&2
            kill -TERM "$pid" 2>/dev/null || true
            die "the registry did not answer within $START_TIMEOUT s"
        fi
        sleep 1
    done
    log "registry ready (pid $pid) after $((SECONDS - start)) s"
    echo "$URL"
}

cmd_stop() {
    local pid start=$SECONDS
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - start >= 30)); then kill -KILL "$pid" 2>/dev/null || true; break; fi
        sleep 0.5
    done
    rm -f "$PID_FILE"
    log "stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) if running_pid >/dev/null && answers; then echo "running: $URL"; else echo "not running"; exit 1; fi ;;
    url) echo "$URL" ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
