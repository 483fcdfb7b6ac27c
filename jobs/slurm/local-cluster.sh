#!/usr/bin/env bash
# A real one-node SLURM on this machine, for the tests (and for trying the job scripts without
# a cluster): munged, slurmctld and slurmd with every file under $TRIAD_SLURM_DIR
# (default /tmp/triad-slurm). Needs root and Debian's slurm-wlm and munge (jobs/setup.sh
# installs them).
#
#   jobs/slurm/local-cluster.sh start    # prints: export SLURM_CONF=...
#   jobs/slurm/local-cluster.sh stop
#
# The node gets this machine's CPUs and memory (slurmd -C); one partition "debug". Job
# requeue is allowed (JobRequeue=1), processes are tracked without cgroups (containers).
set -euo pipefail

dir=${TRIAD_SLURM_DIR:-/tmp/triad-slurm}
conf=$dir/slurm.conf

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if [[ -s $pidfile ]]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  # Daemons of an earlier run whose pid files are gone.
  pkill -f "slurmd -f $conf" 2>/dev/null || true
  pkill -f "slurmctld -f $conf" 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -f "slurm(ctl)?d -f $conf" >/dev/null || return 0
    sleep 0.2
  done
  pkill -9 -f "slurm(ctl)?d -f $conf" 2>/dev/null || true
}

start() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null || {
    echo "local-cluster.sh: slurm-wlm and munge are not installed (run jobs/setup.sh)" >&2
    exit 1
  }
  [[ $(id -u) == 0 ]] || { echo "local-cluster.sh: the SLURM daemons need root" >&2; exit 1; }
  stop
  rm -rf "$dir"
  mkdir -p "$dir/state" "$dir/spool"
  # munge: its own key (created by the package, or here), socket and pid under /run/munge.
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
  if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  munge -n </dev/null | unmunge >/dev/null || { echo "local-cluster.sh: munge does not work" >&2; exit 1; }

  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat >"$conf" <<CONF
ClusterName=triad-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${TRIAD_SLURMCTLD_PORT:-6817}
SlurmdPort=${TRIAD_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobRequeue=1
KillWait=30
InactiveLimit=0
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=${mem:-1000} State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  slurmctld -f "$conf"
  slurmd -f "$conf"
  export SLURM_CONF=$conf
  for _ in $(seq 150); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  echo "local-cluster.sh: the node did not come up; logs in $dir" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  exit 1
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
