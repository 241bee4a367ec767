#!/usr/bin/env bash
# System packages the full test suite uses (as root, Debian/Ubuntu): headless Chromium for
# the report's browser test and a single-node Slurm for the cluster test. Tests that need
# them are skipped, with the reason, where they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
bash scripts/local_slurm.sh install
