#!/usr/bin/env bash
# The prepared GPU check of issue #22 (see bench/gpu_check.py): one markdown table.
#   bench/gpu_check.sh [--dry-run] [--out FILE] [--data PATH] [--work DIR] [--budget S]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/gpu_check.py "$@"
