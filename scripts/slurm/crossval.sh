#!/usr/bin/env bash
# Submit LUNA16's ten-fold cross-validation: the fold array (crossval.sbatch), then the merge and
# scoring (crossval_merge.sbatch) once every fold has succeeded. Arguments go to both.
#
#   bash scripts/slurm/crossval.sh --config configs/luna16.yaml --data.data_dir=/data/LUNA16
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
array=$(sbatch --parsable "$here/crossval.sbatch" "$@")
merge=$(sbatch --parsable --dependency="afterok:${array%%;*}" "$here/crossval_merge.sbatch" "$@")
echo "submitted the fold array ${array%%;*} and the merge job ${merge%%;*} (runs after every fold succeeds)"
