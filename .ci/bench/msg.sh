#!/bin/bash
# msg.sh BIN unary|connect : fresh server, one throughput run, prints persisted_per_s
BIN=$1; API=$2; D=/tmp/bench-msg-$$; PORT=50077
rm -rf $D; PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
sleep 2
OUT=$(CHAT_ENGINE_OPERATOR_TOKEN=benchtok $BIN loadtest --target http://127.0.0.1:$PORT --server-pid $PID --api $API --agents 2 --conversations 8 --rate 0 --concurrency 128 --duration 15 --json 2>/dev/null | tail -1)
kill $PID; wait $PID 2>/dev/null; sleep 2; rm -rf $D
echo "$OUT" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("persisted_per_s"), d.get("undelivered"), d.get("duplicates"))'
