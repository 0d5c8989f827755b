#!/usr/bin/env bash
# Benchmark: TPC-H Q1-Q22 on sluice against DuckDB 1.5.5, in one run, interleaved, over the
# same Parquet files and the same query texts (queries/tpch/qN.sql), whole processes timed.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 1 --out /tmp/tpch-sf1
#   bash benches/tpch_vs_duckdb.sh target/release/sluice /tmp/tpch-sf1 [ROUNDS]
#
# Env: BEFORE another sluice binary timed beside (a "before" column), BEFORE_FLAGS its extra
# flags (BEFORE=BIN BEFORE_FLAGS="--set sluice.decimal_arith=false": one binary with and
# without a rewrite), SLUICE_FLAGS extra
# flags for the sluice under test (e.g. `--join-order as_written`), ROUNDS default 2 (or the
# third argument), THREADS default 2 (sluice --threads and DuckDB SET threads), QUERIES default 1-22 (e.g. 1,3,5-9), JSON_OUT a file for the results
# as JSON, VENV the Python venv (default ~/.cache/sluice-bench-venv; made when missing, with
# duckdb==1.5.5 and pyarrow from PyPI).
#
# First each query's answer is checked once, untimed: sluice's (`sluice sql FILE --table ...
# --out DIR`, read back with pyarrow) against DuckDB's, by row and column count and, per
# column, the sum of a numeric column or the sorted values of any other. Then, per round and
# per query, one fresh process of each engine, alternating which goes first each round:
# `sluice bench tpch --queries N` (its JSON gives the query time) and a fresh Python running
# the query on an in-memory DuckDB with views over DATA/table/*.parquet (it prints its query
# time). Both are also timed whole, wall clock. The minimum over rounds is kept. Prints a
# Markdown table (query s, process s, ratio sluice/DuckDB of process times); exits non-zero
# when an answer differs.
set -euo pipefail
sluice=${1:?usage: tpch_vs_duckdb.sh SLUICE_BIN DATA_DIR [ROUNDS]}
data=${2:?usage: tpch_vs_duckdb.sh SLUICE_BIN DATA_DIR [ROUNDS]}
rounds=${3:-${ROUNDS:-2}}
export THREADS=${THREADS:-2}
export QUERIES=${QUERIES:-1-22}
. "$(dirname "$0")/venv.sh"
bench_venv

sluice=$(command -v "$sluice" || echo "$sluice")
exec "$VENV/bin/python" "$(dirname "$0")/tpch_vs_duckdb.py" bench "$sluice" "$data" "$rounds"
