#!/usr/bin/env bash
# Benchmark: a join larger than the memory limit (TPC-H orders x lineitem on orderkey,
# grouped by o_orderpriority), with sluice's grace hash join, DataFusion's sort-merge join
# (through sluice, --join-strategy sort_merge), DataFusion's in-memory hash join, and DuckDB;
# wall time by hyperfine, peak RSS by GNU time, same machine, same files.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 10 --out /tmp/tpch-sf10
#   pip install duckdb   # in a venv; DUCKDB_PYTHON below points at its python
#   LIMIT=256MiB bash benches/join_memory.sh target/release/sluice /tmp/tpch-sf10
set -uo pipefail
. "$(dirname "$0")/venv.sh"
need_hyperfine
sluice=${1:?usage: join_memory.sh SLUICE_BIN TPCH_PARQUET_DIR}
data=${2:?usage: join_memory.sh SLUICE_BIN TPCH_PARQUET_DIR}
py=${DUCKDB_PYTHON:-python3}
limit=${LIMIT:-256MiB}
duck_limit=${DUCK_LIMIT:-256MB}
threads=${THREADS:-$(nproc)}
out=${OUT:-/tmp/sluice-join-bench}
mkdir -p "$out/spill" "$out/duck-tmp"

query="SELECT o_orderpriority, COUNT(*) AS n FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY o_orderpriority ORDER BY o_orderpriority"
tables="--table orders=$data/orders/ --table lineitem=$data/lineitem/"

cat > "$out/duck.py" <<PY
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads = $threads")
con.execute("SET temp_directory = '$out/duck-tmp'")
if sys.argv[1] != "none":
    con.execute(f"SET memory_limit = '{sys.argv[1]}'")
con.execute("CREATE VIEW orders AS SELECT * FROM read_parquet('$data/orders/*.parquet')")
con.execute("CREATE VIEW lineitem AS SELECT * FROM read_parquet('$data/lineitem/*.parquet')")
print(con.execute("""$query""").fetchall())
PY

run_sluice() { "$sluice" -q sql -e "$query" $tables --threads "$threads" "$@"; }

echo "== results (must be equal)"
run_sluice --memory-limit "$limit"
$py "$out/duck.py" none

echo "== peak RSS (GNU time, one run each)"
rss() {
  local name=$1; shift
  /usr/bin/time -f "$name: %e s, peak RSS %M KB, exit %x" "$@" > /dev/null 2> "$out/rss.txt"
  tail -1 "$out/rss.txt"
}
rss "sluice grace $limit" "$sluice" -q sql -e "$query" $tables --threads "$threads" --memory-limit "$limit"
rss "sluice sort_merge $limit" "$sluice" -q sql -e "$query" $tables --threads "$threads" --memory-limit "$limit" --join-strategy sort_merge
rss "datafusion hash join $limit" "$sluice" -q sql -e "$query" $tables --threads "$threads" --memory-limit "$limit" --join-strategy in_memory
rss "duckdb $duck_limit" "$py" "$out/duck.py" "$duck_limit"
rss "sluice no limit" "$sluice" -q sql -e "$query" $tables --threads "$threads"
rss "duckdb no limit" "$py" "$out/duck.py" none

echo "== wall time (hyperfine)"
hyperfine --warmup 1 --runs "${RUNS:-3}" --export-markdown "$out/times.md" \
  -n "sluice grace $limit" "$sluice -q sql -e \"$query\" $tables --threads $threads --memory-limit $limit" \
  -n "sluice sort_merge $limit" "$sluice -q sql -e \"$query\" $tables --threads $threads --memory-limit $limit --join-strategy sort_merge" \
  -n "duckdb $duck_limit" "$py $out/duck.py $duck_limit" \
  -n "sluice no limit" "$sluice -q sql -e \"$query\" $tables --threads $threads" \
  -n "duckdb no limit" "$py $out/duck.py none"
cat "$out/times.md"
