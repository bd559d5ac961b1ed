#!/usr/bin/env bash
# Set up, then run the service on local Ray: http://127.0.0.1:8000 (docs at /docs),
# Ray dashboard at http://127.0.0.1:8265. Extra arguments go to `serve run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/serve run serve_config.yaml "$@"
