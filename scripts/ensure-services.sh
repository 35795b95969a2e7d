#!/usr/bin/env bash
# Start the real services the tests talk to when they are not answering (see shared INFRA).
set -euo pipefail

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
fi

# The stream brokers (tests/streams): start each one that does not answer on its port.
answers() {  # answers PORT: something accepts TCP connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ensure() {  # ensure NAME PORT WAIT_SECONDS COMMAND...
  local name=$1 port=$2 wait=$3
  shift 3
  answers "$port" && return 0
  echo "starting $name"
  "$@" || true
  for _ in $(seq 1 $((wait * 5))); do answers "$port" && return 0; sleep 0.2; done
  echo "$name is not answering on 127.0.0.1:$port (started with: $*)" >&2
  exit 1
}

ensure Redis 6379 10 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
  --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
ensure RabbitMQ 5672 60 rabbitmq-server -detached
ensure Mosquitto 1883 10 mosquitto -d -c /etc/mosquitto/mosquitto.conf
ensure "NATS JetStream" 4222 10 start-stop-daemon --start --oknodo --background \
  --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
  -l /var/log/nats-server.log
