#!/bin/bash
# cpu.sh BIN API RATE : fresh server, loadtest at a fixed RATE for 20 s; CPU ms per 1,000 msgs
# of the server, all postgres processes and the load generator, over 10 s in the middle.
BIN=$1; API=$2; RATE=$3; D=/tmp/bench-cpu-$$; PORT=50078
rm -rf $D; PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
sleep 2
CHAT_ENGINE_OPERATOR_TOKEN=benchtok $BIN loadtest --target http://127.0.0.1:$PORT --server-pid $PID --api $API --agents 2 --conversations 8 --rate $RATE --concurrency 128 --duration 20 --json > $D/lt.out 2>/dev/null &
LT=$!
sleep 7
ticks() { # sum utime+stime of pids
  local s=0; for p in "$@"; do [ -r /proc/$p/stat ] && s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
pgp() { pgrep -x postgres | tr '\n' ' '; }
LTP=$(pgrep -f "loadtest --target http://127.0.0.1:$PORT" | head -1)
P1=$(pgp); s1=$(ticks $PID); p1=$(ticks $P1); l1=$(ticks $LTP)
sleep 10
s2=$(ticks $PID); p2=$(ticks $P1); l2=$(ticks $LTP)
wait $LT
kill $PID; wait $PID 2>/dev/null; sleep 2
python3 - "$RATE" $((s2-s1)) $((p2-p1)) $((l2-l1)) < <(tail -1 $D/lt.out) <<'PY'
import sys,json
rate=float(sys.argv[1]); s,p,l=[int(x)*10 for x in sys.argv[2:5]]  # ticks are 10 ms
msgs=rate*10
print(f"server {s/msgs*1000:.0f} pg {p/msgs*1000:.0f} loadgen {l/msgs*1000:.0f} ms/1000msgs")
PY
rm -rf $D
