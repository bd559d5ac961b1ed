#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432, user postgres,
# trust) are running: installed and started if missing. The tests use both.
set -euo pipefail
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  $sudo rabbitmq-server -detached || true
  for _ in $(seq 1 60); do
    port_open 5672 && break
    sleep 1
  done
  port_open 5672 || { echo "RabbitMQ did not start on 127.0.0.1:5672" >&2; exit 1; }
fi

if ! port_open 5432; then
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    # A fresh cluster asks for passwords over TCP; the tests connect as postgres with none.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      $sudo sed -i -E 's/^(host\s+all\s+all\s+(127.0.0.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
  $sudo service postgresql start >/dev/null || $sudo pg_ctlcluster --skip-systemctl-redirect "$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | head -1)" main start
  for _ in $(seq 1 60); do
    port_open 5432 && break
    sleep 1
  done
  port_open 5432 || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi
