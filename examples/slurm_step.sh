# Sourced by the sbatch scripts: run the training as one srun step that survives SLURM's warnings,
# then requeue the job when the run stopped early to be resumed.
#
#   source examples/slurm_step.sh
#   SRUN_ARGS="--ntasks-per-node=1" run_training_step torchrun ... -m megactllm.train ...
#
# What happens at a time limit (#SBATCH --signal=B:USR1@300 --requeue):
#  1. SLURM sends SIGUSR1 to this batch shell. The trap creates $MEGACTLLM_STOP_FILE; the ranks
#     look for it at every iteration boundary. (Not a signal to the whole step: that would also
#     hit helper processes, e.g. megatron-core's checkpoint writers, and miss workers still
#     starting up. torchrun ignores USR1 anyway, in case a signal is sent to the step.)
#  2. At the next boundary all ranks agree, save a checkpoint and exit; rank 0 writes exit code
#     75 to $MEGACTLLM_EXIT_STATUS (torchrun reports any worker exit as 1).
#  3. Code 75 here: `scontrol requeue`; the requeued job resumes from checkpoint.load = checkpoint.save.
# SIGTERM (scancel, or the hard time limit) reaches every process from SLURM itself: the ranks
# save at the next boundary, and this shell waits for them (within KillWait) and does not requeue.
# Both files default to the submit directory, which every node must see (as the checkpoint does).

EXIT_CODE_RESUME=75

run_training_step() {
  local base="${SLURM_SUBMIT_DIR:-$PWD}/${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID}"
  export MEGACTLLM_EXIT_STATUS="${MEGACTLLM_EXIT_STATUS:-$base.exit}"
  export MEGACTLLM_STOP_FILE="${MEGACTLLM_STOP_FILE:-$base.stop}"
  rm -f "$MEGACTLLM_EXIT_STATUS" "$MEGACTLLM_STOP_FILE"
  TERMINATED=0
  trap 'echo "slurm_step: USR1 received at $(date +%T): asking the ranks to save and stop" >&2; touch "$MEGACTLLM_STOP_FILE"' USR1
  trap 'TERMINATED=1; echo "slurm_step: SIGTERM at $(date +%T): waiting for the ranks to save" >&2' TERM
  # torchrun must not die of a USR1 meant for its workers: ignored here, kept through exec.
  # shellcheck disable=SC2086
  srun ${SRUN_ARGS:-} bash -c 'trap "" USR1; exec "$@"' launch "$@" &
  local step=$!
  while kill -0 "$step" 2>/dev/null; do
    wait "$step" || true  # returns early when a trapped signal arrives: keep waiting
  done
  local rc=0
  wait "$step" || rc=$?
  trap - USR1 TERM
  rm -f "$MEGACTLLM_STOP_FILE"
  local code=$rc reason="" iteration=""
  if [ -s "$MEGACTLLM_EXIT_STATUS" ]; then
    read -r code reason iteration <"$MEGACTLLM_EXIT_STATUS"
  fi
  echo "slurm_step: step exit $rc, training exit $code${reason:+ ($reason at iteration $iteration)}" >&2
  if [ "$code" = 0 ] && [ "$rc" != 0 ]; then code=$rc; fi
  if [ "$code" = "$EXIT_CODE_RESUME" ] && [ "$TERMINATED" = 1 ]; then
    # scancel, or the hard time limit: the job is ending, not to be requeued; resubmit to resume.
    echo "slurm_step: checkpoint saved; the job was terminated: resubmit it to resume" >&2
    return 0
  fi
  if [ "$code" = "$EXIT_CODE_RESUME" ]; then
    echo "slurm_step: run not finished: requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$code"
}
