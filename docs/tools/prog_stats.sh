# Sourced by the tools in this directory. `prog_stats PID TYPE` prints "run_time_ns run_cnt"
# summed over the BPF programs of type TYPE (13: sock_ops, 26: tracing, the walk among them)
# that process PID holds, each program once: the agent holds some by more than one fd.
prog_stats() {
  local t=0 c=0 f id seen=" "
  for f in /proc/"$1"/fdinfo/*; do
    grep -q "^prog_type:[[:space:]]*$2$" "$f" 2>/dev/null || continue
    id=$(awk '/^prog_id:/ {print $2}' "$f")
    case "$seen" in *" $id "*) continue ;; esac
    seen="$seen$id "
    t=$((t + $(awk '/^run_time_ns:/ {print $2}' "$f")))
    c=$((c + $(awk '/^run_cnt:/ {print $2}' "$f")))
  done
  echo "$t $c"
}
