#!/usr/bin/env bash
# A long GPU job that outlives one device call (at most 10 minutes each): start it as a daemon in one call, collect
# it in the next ones while the lease is warm.
#
#   bash benchmarks/gpu_daemon.sh start DIR -- python3 benchmarks/scale_8b.py ... --out DIR/out.jsonl
#   bash benchmarks/gpu_daemon.sh wait DIR [SECONDS]      # in each later call
#
# start: runs the command in its own session (setsid, stdin closed), output to DIR/log, its exit status to DIR/rc.
# wait:  exits 3 AT ONCE when DIR is missing -- the call landed on a fresh machine (the lease went back), so waiting
#        is device time for nothing (the twelfth run's call 3 waited out 9 minutes that way); otherwise waits until
#        DIR/rc exists or SECONDS pass (default 560), copies DIR to $OUT (when set) and prints the log's tail.
#        Exit 0: the job ended (its status is in DIR/rc); 4: still running.
set -u
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR -- COMMAND... | wait DIR [SECONDS]"; exit 2; }
case "$cmd" in
  start)
    shift 2
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { echo "gpu_daemon: no command to start"; exit 2; }
    mkdir -p "$dir"
    rm -f "$dir/rc"
    setsid nohup bash -c '"$@" > "$0/log" 2>&1; echo $? > "$0/rc"' "$dir" "$@" < /dev/null > /dev/null 2>&1 &
    echo "gpu_daemon: started in $dir (pid $!)"
    ;;
  wait)
    [ -d "$dir" ] || { echo "gpu_daemon: $dir is missing: a fresh machine, the daemon is gone"; exit 3; }
    limit=${3:-560}
    start=$(date +%s)
    while [ ! -f "$dir/rc" ] && [ $(( $(date +%s) - start )) -lt "$limit" ]; do sleep 1; done
    if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp -r "$dir"/. "$OUT"/; fi
    tail -c 3000 "$dir/log" 2>/dev/null
    if [ -f "$dir/rc" ]; then echo "gpu_daemon: ended, rc $(cat "$dir/rc")"; exit 0; fi
    echo "gpu_daemon: still running after ${limit}s"; exit 4
    ;;
  *) echo "gpu_daemon: unknown command $cmd (allowed: start, wait)"; exit 2 ;;
esac
