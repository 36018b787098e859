#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster on this Debian machine, as root.
#
#   bash tests/services/slurm-start.sh   # installs slurmctld slurmd slurm-client munge if missing
#   bash tests/services/slurm-stop.sh    # stops exactly the daemons this script started
#
# The cluster has one node, "localhost", configured with more CPUs than the machine has so
# that array tasks run side by side, and one partition, "debug" (the default). munged runs
# as the munge user, slurmctld and slurmd as root. The PIDs of the daemons started here are
# recorded in $HOG_SLURM_STATE (default /tmp/hog-slurm) for tests/services/slurm-stop.sh, which
# stops those and no other process. If a cluster already answers `sinfo`, nothing is started.
#
# Written for throwaway machines (CI, a developer's container): it writes
# /etc/slurm/slurm.conf, and refuses to replace one it did not write.
set -euo pipefail

STATE=${HOG_SLURM_STATE:-/tmp/hog-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hog-executor tests/services/slurm-start.sh"
OLD_MARK="# written by hog-executor ci/slurm-start.sh"  # the same script, at its former path
PARTITION=debug

say() { printf 'slurm-start: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

node_state() { timeout 10 sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -n 1; }

if [ "$(id -u)" != 0 ]; then
  die "run this as root (it installs packages and starts daemons)"
fi
start_time=$SECONDS

if command -v sinfo >/dev/null 2>&1 && [ -n "$(timeout 10 sinfo -h -o '%P' 2>/dev/null)" ]; then
  say "a Slurm cluster already answers sinfo; nothing started"
  exit 0
fi

# -- packages ------------------------------------------------------------------------------
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  # Keep the packages' maintainer scripts from starting daemons of their own: every daemon
  # of this cluster is started below, so that slurm-stop.sh knows all of them.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  install() { apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; }
  if ! install; then
    apt-get update -qq
    install
  fi
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi

# -- state directory and configuration ------------------------------------------------------
if [ -s "$STATE/pids" ]; then
  while read -r name pid; do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      die "$name ($pid), started earlier by this script, still runs:" \
        "bash tests/services/slurm-stop.sh"
    fi
  done < "$STATE/pids"
  say "forgetting the daemons of an earlier start that are no longer running"
fi
mkdir -p "$STATE"
chmod 700 "$STATE"
rm -rf "$STATE/ctld" "$STATE/spool"
mkdir -p "$STATE/ctld" "$STATE/spool"
: > "$STATE/pids"
# The tests' fixture marks a cluster it started (tests/conftest.py); this one is not yet.
rm -f "$STATE/started-by-tests"

if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qxF -e "$MARK" -e "$OLD_MARK"; then
  die "$CONF exists and was not written by this script; not replacing it"
fi
nproc=$(nproc)
cpus=$(( nproc * 4 > 16 ? nproc * 4 : 16 ))
mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
mkdir -p /etc/slurm
cat > "$CONF.tmp" <<EOF
$MARK
# A throwaway single-node cluster for hog-executor's tests; slurm-stop.sh stops it.
ClusterName=hogtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
# Small, so that the tests meet a map larger than one array allows (Slurm's default is 1001).
MaxArraySize=64
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
mv -f "$CONF.tmp" "$CONF"

# -- munge ----------------------------------------------------------------------------------
record() {  # name pidfile: remember the daemon that wrote pidfile
  local name=$1 pidfile=$2 pid="" i
  for ((i = 0; i < 100; i++)); do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
      printf '%s %s\n' "$name" "$pid" >> "$STATE/pids"
      return 0
    fi
    sleep 0.1
  done
  die "$name did not start (no live PID in $pidfile)"
}

if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge > /dev/null 2>&1; then
  say "munged already runs; using it"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey > /dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key --force
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  for d in /run/munge /var/lib/munge /var/log/munge; do
    mkdir -p "$d"
    chown munge:munge "$d"
  done
  chmod 755 /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  record munged /run/munge/munged.pid
  for ((i = 0; i < 50; i++)); do
    if munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then break; fi
    sleep 0.1
  done
fi

# -- slurmctld and slurmd -------------------------------------------------------------------
rm -f "$STATE/slurmctld.pid" "$STATE/slurmd.pid"
slurmctld -c
record slurmctld "$STATE/slurmctld.pid"
slurmd -N localhost
record slurmd "$STATE/slurmd.pid"

state=""
for ((i = 0; i < 120; i++)); do
  state=$(node_state || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*|unknown*)
      if ((i % 10 == 9)); then
        scontrol update nodename=localhost state=resume > /dev/null 2>&1 || true
      fi ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated) ;;
  *)
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    die "node localhost is '${state:-not listed}' after 60 s" \
      "(logs above; stop with tests/services/slurm-stop.sh)" ;;
esac
say "cluster up in $((SECONDS - start_time)) s: partition $PARTITION, node localhost ($cpus CPUs)," \
  "daemons $(awk '{ printf "%s%s=%s", sep, $1, $2; sep=" " }' "$STATE/pids")"
