# Sourced by the SLURM job scripts: starts triad-train on the job's tasks and makes the job
# survive preemption and time limits.
#
#   triad_launch ARGS...     # the triad-train arguments (must include --run.dir and --run.name)
#
# Launcher: TRIAD_LAUNCHER=srun (default; PMIx, `srun --mpi=pmix`) or mpirun (Open MPI reads
# the allocation from SLURM). Signals: the job scripts ask for `--signal=B:USR1@120`, so the
# batch shell gets SIGUSR1 two minutes before the time limit; it forwards SIGUSR1/SIGTERM to the
# launcher, which forwards them to every rank: triad-train finishes the step, writes a
# checkpoint and exits 0. If the run has not reached train.steps then, the job requeues itself
# (`scontrol requeue`, which needs `--requeue`) and continues with `--resume auto` (same job id,
# same run directory). `scontrol requeue` by an operator or a preempting job sends SIGTERM: same
# path.

triad_root=${TRIAD_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
triad_train=${TRIAD_TRAIN:-$triad_root/build/triad-train}

# The value of the last "--key value" pair named $1 in the remaining arguments.
triad_arg() {
  local key=$1 value="" prev=""
  shift
  for a in "$@"; do
    [[ $prev == "$key" ]] && value=$a
    prev=$a
  done
  printf '%s' "$value"
}

# Exit status 0 if the run's checkpoint directory (ckpt/ of the run directory, or the
# checkpoint.dir its config.ini names) holds the checkpoint of the run's last step.
triad_run_finished() {
  local run=$1 steps latest ckpt
  [[ -f $run/config.ini ]] || return 1
  ckpt=$(awk -F' *= *' '/^\[/{s=$0} s=="[checkpoint]" && $1=="dir"{print $2}' "$run/config.ini")
  ckpt=${ckpt:-$run/ckpt}
  [[ -f $ckpt/latest ]] || return 1
  steps=$(awk -F' *= *' '/^\[/{s=$0} s=="[train]" && $1=="steps"{print $2}' "$run/config.ini")
  latest=$(sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p; s/^step_0*\.h5$/0/p' "$ckpt/latest")
  [[ -n $steps && -n $latest && $latest -ge $steps ]]
}

triad_launch() {
  local run_dir run_name
  run_dir=$(triad_arg --run.dir "$@")
  run_name=$(triad_arg --run.name "$@")
  [[ -n $run_dir && -n $run_name ]] || {
    echo "triad_launch: the arguments must include --run.dir and --run.name" >&2
    return 2
  }
  [[ -x $triad_train ]] || {
    echo "triad_launch: $triad_train is not built (jobs/build.sh, or set TRIAD_TRAIN)" >&2
    return 2
  }
  local cmd
  case ${TRIAD_LAUNCHER:-srun} in
    srun) cmd=(srun --mpi=pmix --kill-on-bad-exit=1 "$triad_train") ;;
    mpirun) cmd=(mpirun "$triad_train") ;;
    *) echo "triad_launch: TRIAD_LAUNCHER must be srun or mpirun" >&2; return 2 ;;
  esac
  echo "triad: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}," \
       "${SLURM_NTASKS:-?} tasks: ${cmd[*]} $* --resume auto"
  "${cmd[@]}" "$@" --resume auto &
  local pid=$! rc=0
  trap 'kill -USR1 $pid 2>/dev/null' USR1
  # Open MPI's mpirun ends the job on SIGTERM without passing it on (no checkpoint); it passes
  # SIGUSR1 on, which triad-train takes alike. (SLURM signals the batch step's processes too, so
  # under mpirun a requeue's SIGTERM can reach mpirun itself: srun is the launcher that keeps it.)
  if [[ ${TRIAD_LAUNCHER:-srun} == mpirun ]]; then
    trap 'kill -USR1 $pid 2>/dev/null' TERM
  else
    trap 'kill -TERM $pid 2>/dev/null' TERM
  fi
  # `wait` returns early when a trapped signal arrives: wait again until the launcher is done.
  while true; do
    wait $pid && rc=0 || rc=$?
    kill -0 $pid 2>/dev/null || break
  done
  trap - USR1 TERM
  if [[ $rc == 0 ]] && ! triad_run_finished "$run_dir/$run_name"; then
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
      echo "triad: $run_dir/$run_name stopped before its last step: requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID"  # an array task has its own job id too
    fi
  fi
  return $rc
}
