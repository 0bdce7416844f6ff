#!/bin/bash
# pss.sh BIN OUT LOADTEST_ARGS... : pg_stat_statements (and the load generator's JSON, in
# OUT.lt) over one loadtest run against a fresh server, e.g.
#   pss.sh BIN out.txt --api unary --agents 2 --conversations 8 --rate 5000 --concurrency 128 --duration 20
#   pss.sh BIN out.txt --mode routing --agents 50 --capacity 20 --think-ms 500 --rate 0 --concurrency 64 --visitors 15000 --duration 15
# BY=calls orders by calls instead of time; the last lines are the totals of every statement.
# Needs root (psql runs as postgres).
BIN=$1; OUT=$2; shift 2; D=/tmp/bench-pss-$$; PORT=50079
rm -rf $D; PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
kill $PID; wait $PID 2>/dev/null; sleep 2
echo "shared_preload_libraries='pg_stat_statements'" >> $D/pg/postgresql.conf
PID=$($(dirname "$0")/serve.sh $BIN $PORT $D)
for i in $(seq 120); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.5; done
PGD=$(dirname $(find $D -name postmaster.pid | head -1))
Q() { runuser -u postgres -- psql -X -h $(sed -n 5p $PGD/postmaster.pid) -p $(sed -n 4p $PGD/postmaster.pid) -U chat_engine -d chat_engine "$@"; }
Q -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
CHAT_ENGINE_OPERATOR_TOKEN=benchtok $BIN loadtest --target http://127.0.0.1:$PORT --server-pid $PID "$@" --json 2>/dev/null | tail -1 > $OUT.lt
Q -c "SELECT calls, round(total_exec_time::numeric,0) AS ms, round((total_exec_time/calls)::numeric*1000,0) AS us_per_call, rows, left(regexp_replace(query,'\s+',' ','g'),110) FROM pg_stat_statements ORDER BY ${BY:-total_exec_time} DESC LIMIT 40" > $OUT
Q -c "SELECT sum(calls) AS calls, round(sum(total_exec_time)::numeric) AS ms FROM pg_stat_statements" >> $OUT
kill $PID; wait $PID 2>/dev/null; sleep 2; rm -rf $D
