#!/usr/bin/env bash
# The GPU check in one call: luna's training throughput in fp32, bf16-mixed and with torch.compile,
# the loader against the model, luna.evaluate at LUNA16 V2's size and DDP on every visible GPU, as
# one markdown table (scripts/gpu_check.py says how each is measured). Under 8 minutes on one GPU.
#
#   bash scripts/gpu_check.sh [--out docs/gpu_check.md]    # on a GPU machine
#   bash scripts/gpu_check.sh --dry-run                    # on a CPU: checks the script, measures nothing
#
# Put the table in docs/ with its date whenever a GPU machine is at hand.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python scripts/gpu_check.py "$@"
