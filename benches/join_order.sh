#!/usr/bin/env bash
# Benchmark: does sluice's join order by cost land near the best order? Star, snowflake and
# fact-to-fact queries over TPC-H tables, each written fact tables first and selective
# dimensions last, run as written, reordered by cost, in an order chosen by hand, and on
# DuckDB 1.5.5 (which reorders), whole processes, 2 threads; answers checked against DuckDB's.
#
#   target/release/sluice gen tpch --scale 1 --out /tmp/tpch-sf1
#   bash benches/join_order.sh target/release/sluice /tmp/tpch-sf1 [ROUNDS]
#
# The query texts are in benches/join_order.py. Env: THREADS (default 2), VENV (default
# ~/.cache/sluice-bench-venv, made when missing with duckdb==1.5.5 and pyarrow).
set -euo pipefail
sluice=${1:?usage: join_order.sh SLUICE_BIN DATA_DIR [ROUNDS]}
data=${2:?usage: join_order.sh SLUICE_BIN DATA_DIR [ROUNDS]}
rounds=${3:-3}
. "$(dirname "$0")/venv.sh"
bench_venv
sluice=$(command -v "$sluice" || echo "$sluice")
exec "$VENV/bin/python" "$(dirname "$0")/join_order.py" "$sluice" "$data" "$rounds"
