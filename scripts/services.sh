#!/usr/bin/env bash
# Make sure the peers the tests talk to are running (RabbitMQ, Redis, PostgreSQL) and the job sandbox's tools
# (bubblewrap) are installed.
# They already run on the project's machines; elsewhere they are installed from Debian's packages.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_ready=""
need_pkg() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ -z "$apt_ready" ]; then apt-get update -qq; apt_ready=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}" >/dev/null
}

# The job sandbox (workers/sandbox.py): bubblewrap, util-linux's setpriv and prlimit, acl.
bash "$(dirname "$0")/sandbox-tools.sh"
need_pkg chromium chromium    # the OGC HTML pages are checked in headless Chromium (Playwright, no browser download)

if ! listening 6379; then
  echo "services: starting Redis"
  need_pkg redis-server redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

if ! listening 5672; then
  echo "services: starting RabbitMQ"
  need_pkg rabbitmq-server rabbitmq-server
  rabbitmq-server -detached
  for _ in $(seq 120); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 0.5; done
fi

if ! listening 5432; then
  echo "services: starting PostgreSQL"
  need_pkg pg_ctlcluster postgresql
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q "caesar-rest trust" "$conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust # caesar-rest trust\nlocal all all trust # caesar-rest trust' "$conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  for _ in $(seq 60); do listening 5432 && break; sleep 0.5; done
  su postgres -c "psql -qc \"DO \\\$\\\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='root') THEN CREATE ROLE root SUPERUSER LOGIN; END IF; END\\\$\\\$\"" || true
fi

for port in 6379 5672 5432; do
  for _ in $(seq 60); do listening $port && break; sleep 0.5; done
  listening $port || { echo "services: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
done
echo "services: RabbitMQ, Redis and PostgreSQL are up"
