# Sourced by the sbatch scripts: run the training as one srun step that survives SLURM's warnings,
# then requeue the job when the run stopped early to be resumed.
#
#   source examples/slurm_step.sh
#   run_training_step torchrun ... -m megactllm.train ...    # srun options, if any, in SRUN_ARGS
#
# What happens at a time limit (#SBATCH --signal=B:USR1@300 --requeue):
#  1. SLURM sends SIGUSR1 to this batch shell; the trap forwards it to the step's processes
#     (`scancel --signal=USR1`), again every 20 s until the step ends (a worker still starting
#     up misses the first); torchrun itself ignores USR1, its workers set a stop flag.
#  2. At the next iteration boundary all ranks agree, save a checkpoint, and exit; rank 0 writes
#     exit code 75 to $MEGACTLLM_EXIT_STATUS (torchrun reports any worker exit as 1).
#  3. Code 75 here: `scontrol requeue`; the requeued job resumes from train.load = train.save.
# SIGTERM (scancel, or the hard time limit) reaches every process from SLURM itself; this shell
# then only waits for the step, so the checkpoint gets written within KillWait.

EXIT_CODE_RESUME=75

_forward_stop() {
  STOP_REQUESTED=1
  echo "slurm_step: $1 received at $(date +%T): asking the training step to save and stop" >&2
  scancel --signal="$1" "$SLURM_JOB_ID" || true
  LAST_FORWARD=$SECONDS
}

run_training_step() {
  export MEGACTLLM_EXIT_STATUS="${MEGACTLLM_EXIT_STATUS:-${TMPDIR:-/tmp}/megactllm-exit-$SLURM_JOB_ID}"
  rm -f "$MEGACTLLM_EXIT_STATUS"
  STOP_REQUESTED=0
  trap '_forward_stop USR1' USR1
  TERMINATED=0
  trap 'TERMINATED=1; echo "slurm_step: SIGTERM: waiting for the step to save" >&2' TERM
  # torchrun must not die of the USR1 meant for its workers: ignored here, inherited through exec;
  # the workers install their own handler.
  # shellcheck disable=SC2086
  srun ${SRUN_ARGS:-} bash -c 'trap "" USR1; exec "$@"' launch "$@" &
  local step=$!
  while kill -0 "$step" 2>/dev/null; do
    sleep 2 &
    wait $! || true  # a trapped signal interrupts the wait
    if [ "$STOP_REQUESTED" = 1 ] && [ $((SECONDS - LAST_FORWARD)) -ge 20 ]; then
      scancel --signal=USR1 "$SLURM_JOB_ID" || true
      LAST_FORWARD=$SECONDS
    fi
  done
  local rc=0
  wait "$step" || rc=$?
  trap - USR1 TERM
  local code=$rc reason="" iteration=""
  if [ -s "$MEGACTLLM_EXIT_STATUS" ]; then
    read -r code reason iteration <"$MEGACTLLM_EXIT_STATUS"
  fi
  echo "slurm_step: step exit $rc, training exit $code ${reason:+($reason at iteration $iteration)}" >&2
  if [ "$code" = 0 ] && [ "$rc" != 0 ]; then code=$rc; fi
  if [ "$code" = "$EXIT_CODE_RESUME" ] && [ "$TERMINATED" = 1 ]; then
    # scancel, or the hard time limit: the job is ending, not to be requeued; resubmit to resume.
    echo "slurm_step: checkpoint saved; the job was terminated, resubmit it to resume" >&2
    return 0
  fi
  if [ "$code" = "$EXIT_CODE_RESUME" ]; then
    echo "slurm_step: run not finished: requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$code"
}
