#!/usr/bin/env bash
# Make sure RabbitMQ is running on 127.0.0.1:5672 (installed and started if missing).
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
