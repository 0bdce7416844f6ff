#!/bin/bash
# pss.sh BIN API RATE OUT : pg_stat_statements over a fixed-rate run
BIN=$1; API=$2; RATE=$3; OUT=$4; D=/tmp/bench-pss-$$; PORT=50079
rm -rf $D; PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
kill $PID; wait $PID 2>/dev/null; sleep 2
echo "shared_preload_libraries='pg_stat_statements'" >> $D/pg/postgresql.conf 2>/dev/null || echo "shared_preload_libraries='pg_stat_statements'" >> $D/data/pg/postgresql.conf
PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
PGD=$(dirname $(find $D -name postmaster.pid | head -1))
Q() { runuser -u postgres -- psql -X -h $(sed -n 5p $PGD/postmaster.pid) -p $(sed -n 4p $PGD/postmaster.pid) -U chat_engine -d chat_engine "$@"; }
Q -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
CHAT_ENGINE_OPERATOR_TOKEN=benchtok $BIN loadtest --target http://127.0.0.1:$PORT --server-pid $PID --api $API --agents 2 --conversations 8 --rate $RATE --concurrency 128 --duration 20 --json 2>/dev/null | tail -1 > $OUT.lt
Q -c "SELECT calls, round(total_exec_time::numeric,0) AS ms, round((total_exec_time/calls)::numeric*1000,0) AS us_per_call, rows, left(regexp_replace(query,'\s+',' ','g'),110) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 30" > $OUT
kill $PID; wait $PID 2>/dev/null; sleep 2; rm -rf $D
