#!/bin/bash
# route.sh BIN LOADTEST_ARGS... : one `loadtest --mode routing` run against a fresh server
# (rate limits off, see serve.sh); prints the load generator's JSON report. The BENCHMARKS
# runs 1-3 are its arguments (KEEP_LOG=FILE keeps the server log), e.g. run 3:
#   route.sh BIN --agents 20 --capacity 10 --think-ms 1000 --rate 0 --concurrency 64 \
#     --visitors 10000 --duration 300 --queue-first --hold 40
BIN=$1; shift; D=/tmp/bench-route-$$; PORT=50081
rm -rf $D; PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
CHAT_ENGINE_OPERATOR_TOKEN=benchtok $BIN loadtest --target http://127.0.0.1:$PORT --server-pid $PID --mode routing "$@" --json 2>/dev/null | tail -1
kill $PID; wait $PID 2>/dev/null; sleep 2
[ -n "$KEEP_LOG" ] && cp $D/server.log "$KEEP_LOG"
rm -rf $D
