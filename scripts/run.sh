#!/usr/bin/env bash
# Set up, then run the service on local Ray: http://127.0.0.1:8000 (docs at /docs),
# Ray dashboard at http://127.0.0.1:8265. Extra arguments go to `serve run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Ray's own servers (GCS, raylet, workers, dashboard) listen on 127.0.0.1 only: a one-machine
# service has no other node to hear. Set it to 1 on a head node that workers must reach.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
exec .venv/bin/serve run serve_config.yaml "$@"
