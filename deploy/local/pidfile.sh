# Sourced by kafka.sh and jaeger.sh: the process a pid file names, if it still runs that program.

# Prints the pid in PID_FILE when that process runs and its command line matches PATTERN (a grep
# pattern); fails otherwise, so a stale file whose pid was reused by another program is not ours.
running_pid() {
  local pid_file=$1 pattern=$2 pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$pattern" || return 1
  echo "$pid"
}
