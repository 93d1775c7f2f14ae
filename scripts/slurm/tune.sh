#!/usr/bin/env bash
# Submit a sweep as WORKERS array tasks of tune.sbatch sharing one study (on $LUNA_RUNS, shared
# storage). Every argument after WORKERS goes to python -m luna.tune.
#
#   bash scripts/slurm/tune.sh 4 --search configs/search/recipe.yaml --trials 40 --study recipe [...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workers="${1:?usage: tune.sh WORKERS --search FILE --trials N --study NAME [luna.fit arguments]}"
shift
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: WORKERS must be a positive number, got '$workers'" >&2
  exit 2
fi
job=$(sbatch --parsable --array="0-$((workers - 1))" "$here/tune.sbatch" "$@")
echo "submitted ${workers} sweep workers as job array ${job%%;*}; results in \${LUNA_RUNS:-logs}/tune/"
