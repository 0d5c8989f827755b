#!/usr/bin/env bash
# Benchmark: which queries finish under a memory limit, on sluice and on DuckDB 1.5.5, with
# their time and peak RSS (whole processes, 2 threads, the same Parquet files): aggregates with
# large per-group state (array_agg, string_agg, median, COUNT(DISTINCT)), window functions over
# large partitions, sorts with deep limits, joins, and their combinations.
#
#   target/release/sluice gen tpch --scale 1 --out /tmp/tpch-sf1
#   bash benches/memory_matrix.sh target/release/sluice /tmp/tpch-sf1 64 [QUERY ...]
#
# Prints a Markdown table, then both engines' answers per query. Env: VENV (default
# ~/.cache/sluice-bench-venv, made when missing with duckdb==1.5.5), SPILL_DIR.
set -euo pipefail
sluice=${1:?usage: memory_matrix.sh SLUICE_BIN DATA_DIR LIMIT_MIB [QUERY ...]}
data=${2:?usage: memory_matrix.sh SLUICE_BIN DATA_DIR LIMIT_MIB [QUERY ...]}
mib=${3:?usage: memory_matrix.sh SLUICE_BIN DATA_DIR LIMIT_MIB [QUERY ...]}
shift 3
. "$(dirname "$0")/venv.sh"
bench_venv
sluice=$(command -v "$sluice" || echo "$sluice")
exec "$VENV/bin/python" "$(dirname "$0")/memory_matrix.py" "$sluice" "$data" "$mib" "$@"
