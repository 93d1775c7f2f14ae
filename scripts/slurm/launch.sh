# shellcheck shell=bash
# Sourced by the .sbatch scripts: the one launch line of luna under SLURM. The first argument is the
# module to run (luna.fit, or luna.crossval for a fold), the rest are its arguments.
#
# srun starts one task per GPU; Lightning's SLURMEnvironment reads ranks and world size from it.
# The Trainer's devices and num_nodes come from the allocation (SLURM_NTASKS_PER_NODE,
# SLURM_NNODES), so the #SBATCH lines are the only place where GPU and node counts are written.
# Every output (LUNA_RUNS/version_N/) and the HPC checkpoint of a requeued job go to LUNA_RUNS (shared storage).
# The crop cache goes to LUNA_CACHE: node-local scratch by default (built once per node), or
# shared storage with LUNA_SHARED_CACHE=true (built once by global rank 0).

: "${LUNA_RUNS:=$SLURM_SUBMIT_DIR/logs}"
: "${LUNA_CACHE:=${TMPDIR:-/tmp}/luna-cache-$SLURM_JOB_ID}"
: "${LUNA_SHARED_CACHE:=false}"
: "${LUNA_ACCELERATOR:=gpu}"

luna_srun() {
  local module="$1"
  shift
  srun --kill-on-bad-exit=1 python -m "$module" \
    --trainer.accelerator="$LUNA_ACCELERATOR" \
    --trainer.strategy=ddp \
    --trainer.devices="$SLURM_NTASKS_PER_NODE" \
    --trainer.num_nodes="$SLURM_NNODES" \
    --trainer.default_root_dir="$LUNA_RUNS" \
    --trainer.enable_progress_bar=false \
    --data.cache_dir="$LUNA_CACHE" \
    --data.shared_cache="$LUNA_SHARED_CACHE" \
    "$@"
}
