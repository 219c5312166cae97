#!/bin/bash
# Submit every cleaning stage as a chain of SLURM array jobs.
#   examples/clean/submit_slurm.sh examples/clean/mapcc.yaml SHARD_TASKS [overrides...]
# Run it from the directory that should hold logs/ (any; paths in the recipe and overrides are
# taken relative to the repository, or give them absolute).
# SHARD_TASKS array tasks share the per-shard stages (at most one per shard is useful); lsh
# gets one task per band plus one for exact dedup; cluster and report run once.
set -euo pipefail
RECIPE=$1; TASKS=$2; shift 2
OVERRIDES="$*"
BANDS=$(python - "$RECIPE" "$@" <<'PY'
import sys
from megactllm.clean import CleanConfig
cfg = CleanConfig.from_yaml(sys.argv[1], sys.argv[2:])
print((cfg.dedup.bands if cfg.dedup.fuzzy else 0) + 1)
PY
)
mkdir -p logs   # before sbatch: SLURM opens logs/... (relative to this directory) before a task runs
REPO="${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}"  # the tasks run tools/ from the repository
export RECIPE OVERRIDES REPO
submit() {  # submit STAGE ARRAY [DEPENDENCY]
  local dep=${3:+--dependency=afterok:$3}
  sbatch --parsable --export=ALL,STAGE=$1 --array=$2 $dep "$REPO/examples/clean/clean_stage.sbatch"
}
j1=$(submit filter "0-$((TASKS - 1))")
j2=$(submit minhash "0-$((TASKS - 1))" "$j1")
j3=$(submit lsh "0-$((BANDS - 1))" "$j2")
j4=$(submit cluster 0 "$j3")
j5=$(submit dedup "0-$((TASKS - 1))" "$j4")
j6=$(submit report 0 "$j5")
echo "submitted: filter $j1, minhash $j2, lsh $j3, cluster $j4, dedup $j5, report $j6"
