#!/bin/bash
# route-cpu.sh BIN LOADTEST_ARGS... : one `loadtest --mode routing` run against a fresh server;
# CPU of the server, all postgres processes and the load generator over 8 s in the middle,
# per routed chat (routed/s of the whole run times 8 s). E.g. run 1:
#   route-cpu.sh BIN --agents 50 --capacity 20 --think-ms 500 --rate 0 --concurrency 64 \
#     --visitors 15000 --duration 15
BIN=$1; shift; D=/tmp/bench-rc-$$; PORT=50083
rm -rf $D; PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
sleep 2
ticks() { local s=0; for p in "$@"; do [ -r /proc/$p/stat ] && s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
CHAT_ENGINE_OPERATOR_TOKEN=benchtok $BIN loadtest --target http://127.0.0.1:$PORT --server-pid $PID --mode routing "$@" --json > $D/lt.out 2>/dev/null &
LT=$!
sleep 4
LTP=$(pgrep -f "loadtest --target http://127.0.0.1:$PORT" | head -1)
P1=$(pgrep -x postgres | tr '\n' ' '); s1=$(ticks $PID); p1=$(ticks $P1); l1=$(ticks $LTP)
sleep 8
s2=$(ticks $PID); p2=$(ticks $P1); l2=$(ticks $LTP)
wait $LT
tail -1 $D/lt.out | python3 -c '
import json,sys
s,p,l=[int(x)*10 for x in sys.argv[1:4]]  # ticks are 10 ms
d=json.load(sys.stdin); n=d["routed_per_s"]*8
keys=["started_per_s","routed_per_s","over_capacity","start_errors","close_errors","stream_errors"]
print(" ".join(f"{k} {d[k]}" for k in keys))
print(f"ms per routed chat: server {s/n:.2f} pg {p/n:.2f} loadgen {l/n:.2f} total {(s+p+l)/n:.2f}")
' $((s2-s1)) $((p2-p1)) $((l2-l1))
kill $PID; wait $PID 2>/dev/null; sleep 2; rm -rf $D
