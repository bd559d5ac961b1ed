#!/usr/bin/env bash
# Install a whisper-serve node as systemd services, run by a dedicated non-root user:
#   sudo cluster/systemd/install.sh head      # the Ray head (deploys the Serve config)
#   sudo cluster/systemd/install.sh worker    # a worker (RAY_RESOURCES says CPU or GPU)
# Copies this checkout to /opt/whisper-serve, sets it up there (ffmpeg, .venv, offline models),
# and enables the unit. Settings: /etc/whisper-serve/whisper.env (from whisper.env.example).
set -euo pipefail
role=${1:-}
case "$role" in
  head|worker) ;;
  *) echo "usage: $0 head|worker" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }

src=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${PREFIX:-/opt/whisper-serve}
etc=/etc/whisper-serve
state=/var/lib/whisper-serve

id whisper >/dev/null 2>&1 || useradd --system --home-dir "$state" --shell /usr/sbin/nologin whisper
install -d -o whisper -g whisper -m 0750 "$state" "$state/models" "$state/tmp"
install -d -m 0755 "$prefix"
# The code, without a virtualenv, caches or local data of the source checkout.
tar -C "$src" --exclude=.venv --exclude=.git --exclude=models --exclude=data \
    --exclude=__pycache__ -cf - . | tar -C "$prefix" -xf -
"$prefix/scripts/setup.sh"
chown -R root:root "$prefix"

install -d -m 0750 -g whisper "$etc"
if [ ! -f "$etc/whisper.env" ]; then
  install -m 0640 -g whisper "$prefix/cluster/systemd/whisper.env.example" "$etc/whisper.env"
  echo "Edit $etc/whisper.env, then: systemctl restart whisper-ray-$role"
fi
install -m 0644 "$prefix/cluster/systemd/whisper-ray-$role.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now "whisper-ray-$role.service"
