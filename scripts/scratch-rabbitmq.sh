#!/usr/bin/env bash
# A throw-away RabbitMQ node for fault tests (restarting the machine's shared broker would disturb others).
# usage: scratch-rabbitmq.sh start|stop|restart DIR PORT DIST_PORT
# DIR must be reachable by the rabbitmq user (not under a root-only directory).
set -euo pipefail
cmd=$1 dir=$2 port=$3 dist=${4:-$((port + 1))}
node="caesar-scratch-$port@localhost"
export RABBITMQ_NODENAME=$node RABBITMQ_DIST_PORT=$dist RABBITMQ_MNESIA_BASE=$dir/mnesia \
  RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid RABBITMQ_FEATURE_FLAGS_FILE=$dir/feature_flags \
  RABBITMQ_QUORUM_DIR=$dir/quorum RABBITMQ_STREAM_DIR=$dir/stream RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
  RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins

up() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  command -v rabbitmq-server >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; }
  mkdir -p "$dir/mnesia" "$dir/log"
  printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$port" > "$dir/rabbitmq.conf"
  echo '[].' > "$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir"
  (cd /tmp && rabbitmq-server -detached)
  for _ in $(seq 240); do up && break; sleep 0.25; done
  up || { echo "scratch RabbitMQ did not start on $port" >&2; exit 1; }
  rabbitmqctl -q -n "$node" await_startup
}

stop() {
  rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true
  for _ in $(seq 120); do up || break; sleep 0.25; done
}

case $cmd in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|restart DIR PORT" >&2; exit 2 ;;
esac
