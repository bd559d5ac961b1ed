#!/usr/bin/env bash
# Run by whisper-ray-head.service once the head has started: wait for Ray, then deploy the
# cluster's Serve config (a restarted head has no applications until it is deployed again).
set -euo pipefail
cd "$(dirname "$0")/../.."
for _ in $(seq 1 120); do
  .venv/bin/ray status --address "${RAY_HEAD_IP}:6379" >/dev/null 2>&1 && break
  sleep 2
done
exec .venv/bin/serve deploy "${SERVE_CONFIG:-cluster/serve_cluster.yaml}" \
  --address "http://127.0.0.1:8265"
