#!/usr/bin/env bash
# A two-node SLURM cluster on this one machine, for tests and for trying the sbatch scripts.
#
#   sudo scripts/local_slurm.sh up       # install slurm-wlm + munge if missing, start, wait for idle nodes
#   export SLURM_CONF=/tmp/megactllm-slurm/slurm.conf
#   sinfo; sbatch --nodes=2 ...; squeue
#   sudo scripts/local_slurm.sh down     # stop exactly the daemons `up` started (by pid)
#
# Nodes n1 and n2 are two slurmd daemons on this host with their own ports (Debian's slurmd is
# built with multiple-slurmd support); both are reached at 127.0.0.1 (NodeAddr), so job scripts
# must take addresses from SLURM (`scontrol show node`), not from resolving n1/n2.
# Settings (environment): LOCAL_SLURM_DIR (state, logs, config; default /tmp/megactllm-slurm),
# LOCAL_SLURM_PORT (slurmctld's port; the nodes use the next two; default 16817),
# LOCAL_SLURM_CPUS (CPUs declared per node, default 4: more than the machine may have, on purpose).
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-/tmp/megactllm-slurm}"
PORT="${LOCAL_SLURM_PORT:-16817}"
CPUS="${LOCAL_SLURM_CPUS:-4}"
CONF="$DIR/slurm.conf"
PIDS="$DIR/pids"            # "name pid" per daemon this script started
HOST="$(hostname -s)"

log() { echo "local_slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge are not installed and this is not root: apt-get install slurm-wlm munge"
  log "installing slurm-wlm and munge from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running; using it (not ours to stop)"
    return
  fi
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- munged
  for _ in $(seq 50); do
    [ -s /run/munge/munged.pid ] && break
    sleep 0.1
  done
  echo "munged $(cat /run/munge/munged.pid)" >>"$PIDS"
}

write_config() {
  mkdir -p "$DIR/state" "$DIR/spool/n1" "$DIR/spool/n2" "$DIR/log"
  cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh: two nodes on $HOST for tests.
ClusterName=megactllm
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# No cgroups: processes are tracked by parentage, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# Schedule every 2 s (default 60): a requeued job starts again within seconds.
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
# Nodes declare more CPUs than the machine has: use the configured numbers.
SlurmdParameters=config_overrides
# Short timers: seconds between SIGTERM and SIGKILL, how long finished jobs stay visible.
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
MessageTimeout=20
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT + 1)) CPUs=$CPUS RealMemory=16000 State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=$CPUS RealMemory=16000 State=UNKNOWN
PartitionName=local Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

start_daemon() {  # start_daemon NAME COMMAND...: in the foreground of its own session, pid recorded
  local name=$1; shift
  setsid "$@" >>"$DIR/log/$name.stdout" 2>&1 </dev/null &
  echo "$name $!" >>"$PIDS"
}

wait_idle() {
  local states=""
  for _ in $(seq 120); do
    states=$(SLURM_CONF="$CONF" sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ "$states" = "n1=idle n2=idle " ]; then
      log "up: $states(export SLURM_CONF=$CONF)"
      return
    fi
    sleep 0.5
  done
  die "nodes not idle after 60 s (sinfo: ${states:-no answer}); logs in $DIR/log"
}

up() {
  if [ -s "$PIDS" ] && alive "$(awk '$1 == "slurmctld" {print $2}' "$PIDS")"; then
    log "already up ($PIDS)"
    wait_idle
    return
  fi
  install_packages
  mkdir -p "$DIR"
  : >"$PIDS"
  write_config
  start_munge
  # -c: a fresh controller state; -D: stay in the foreground so the recorded pid is the daemon's.
  start_daemon slurmctld slurmctld -D -c -f "$CONF"
  start_daemon slurmd-n1 slurmd -D -N n1 -f "$CONF"
  start_daemon slurmd-n2 slurmd -D -N n2 -f "$CONF"
  wait_idle
}

cancel_jobs() {  # jobs still in the cluster end through SLURM, so no job processes outlive it
  local jobs
  jobs=$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null || true)
  [ -n "$jobs" ] || return 0
  log "cancelling jobs $(echo $jobs)"
  # shellcheck disable=SC2086
  SLURM_CONF="$CONF" scancel $jobs || true
  for _ in $(seq 60); do
    [ -z "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  log "jobs still ending after 30 s: $(SLURM_CONF="$CONF" squeue -h 2>/dev/null | tr '\n' ' ')"
}

down() {
  [ -s "$PIDS" ] || { log "nothing to stop ($PIDS is absent)"; return; }
  if alive "$(awk '$1 == "slurmctld" {print $2}' "$PIDS")"; then cancel_jobs; fi
  # Daemons in reverse order of start; munged last.
  tac "$PIDS" | while read -r name pid; do
    if alive "$pid"; then
      kill -TERM "$pid"
      for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then log "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; fi
      log "stopped $name ($pid)"
    fi
  done
  rm -f "$PIDS"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
