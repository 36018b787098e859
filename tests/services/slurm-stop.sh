#!/usr/bin/env bash
# Stop the throwaway Slurm cluster started by tests/services/slurm-start.sh: cancel the jobs
# still in its queue, then stop exactly the daemons whose PIDs that script recorded (SIGTERM,
# SIGKILL after 10 s). Processes it did not start are never signalled. Safe to run when nothing
# runs.
set -uo pipefail

STATE=${HOG_SLURM_STATE:-/tmp/hog-slurm}
PIDS="$STATE/pids"

say() { printf 'slurm-stop: %s\n' "$*" >&2; }

if [ ! -s "$PIDS" ]; then
  say "no daemons recorded in $PIDS; nothing to stop"
  rm -f "$PIDS" "$STATE/started-by-tests"
  exit 0
fi

# Is `pid` still the daemon `name` that was recorded (and not a recycled PID)?
ours() {
  local name=$1 pid=$2 comm
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$name" ]
}

# Jobs left in the queue would keep running under their slurmstepd after slurmd stops.
if grep -q '^slurmctld ' "$PIDS"; then
  mapfile -t jobs < <(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u)
  if [ "${#jobs[@]}" -gt 0 ]; then
    say "cancelling jobs left in the queue: ${jobs[*]}"
    timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      [ -z "$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o '%A' 2>/dev/null)" ] \
        && break
      sleep 0.5
    done
  fi
fi

# Stop in reverse start order: slurmd, slurmctld, munged.
mapfile -t entries < <(tac "$PIDS")
for entry in "${entries[@]}"; do
  read -r name pid <<< "$entry"
  if ours "$name" "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      ours "$name" "$pid" || break
      sleep 0.1
    done
    if ours "$name" "$pid"; then
      say "$name ($pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name ($pid)"
  else
    say "$name ($pid) is not running"
  fi
done
rm -f "$PIDS" "$STATE/started-by-tests"  # the tests' mark of a cluster they started, if any
