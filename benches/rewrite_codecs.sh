#!/usr/bin/env bash
# Benchmark: the CSV -> partitioned Parquet rewrite (TPC-H lineitem: cast, derive, filter,
# partitioned by l_returnflag, l_linestatus) with sluice under each Parquet compression and
# with DuckDB under its defaults, in one run, whole processes timed by hyperfine; then, for each
# output, its size and the time to read it back (a scan of every column, by sluice and by
# DuckDB). This is what sluice's default compression was chosen by.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 1 --format csv --out /tmp/tpch-sf1-csv
#   bash benches/rewrite_codecs.sh target/release/sluice /tmp/tpch-sf1-csv
#
# Env: THREADS (default 2), RUNS (default 3), CODECS (default "zstd(1) zstd(3) snappy lz4
# none"), OUT (default /tmp/sluice-codecs), VENV (a venv with duckdb 1.5.5, as
# benches/venv.sh makes it), BEFORE (another sluice binary, run with its default
# codec in the same hyperfine run: a before/after of a change).
set -euo pipefail
sluice=${1:?usage: rewrite_codecs.sh SLUICE_BIN CSV_DATA_DIR}
data=${2:?usage: rewrite_codecs.sh SLUICE_BIN CSV_DATA_DIR}
threads=${THREADS:-2}
runs=${RUNS:-3}
out=${OUT:-/tmp/sluice-codecs}
codecs=${CODECS:-"zstd(1) zstd(3) snappy lz4 none"}
. "$(dirname "$0")/venv.sh"
bench_venv
need_hyperfine
rm -rf "$out" && mkdir -p "$out"

select="SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber,
  CAST(l_quantity AS INTEGER) AS quantity,
  CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(15,2)) AS net_price,
  CAST(l_extendedprice * (1 - l_discount) * (1 + l_tax) AS DECIMAL(15,2)) AS charge,
  l_shipdate, CAST(date_part('year', l_shipdate) AS INTEGER) AS ship_year,
  TRIM(l_shipmode) AS l_shipmode, l_comment, l_returnflag, l_linestatus
FROM lineitem WHERE l_shipmode <> 'MAIL'"

cat > "$out/duck_write.py" <<PY
import duckdb
con = duckdb.connect()
con.execute("SET threads = $threads")
con.execute("CREATE VIEW lineitem AS SELECT * FROM read_csv('$data/lineitem/*.csv', header = true)")
con.execute("""COPY ($select) TO '$out/duckdb' (FORMAT parquet,
  PARTITION_BY (l_returnflag, l_linestatus), OVERWRITE_OR_IGNORE)""")
PY
# Reading back: every column, aggregated so that nothing is printed.
scan="SELECT COUNT(*), SUM(l_orderkey), SUM(quantity), SUM(net_price), SUM(charge),
  MAX(l_shipdate), MAX(l_shipmode), MAX(l_comment), COUNT(DISTINCT l_returnflag) FROM t"
cat > "$out/duck_read.py" <<'PY'
import duckdb, sys
con = duckdb.connect()
con.execute(f"SET threads = {sys.argv[2]}")
con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning = true)")
print(con.execute(sys.argv[3]).fetchall())
PY

write_cmds=(-n "duckdb (default: snappy)" "$py $out/duck_write.py")
if [ -n "${BEFORE:-}" ]; then
  write_cmds+=(-n "sluice before (default)" "$BEFORE -q sql -e \"$select\" --table lineitem=$data/lineitem/ --out $out/before/ --partition-by l_returnflag,l_linestatus --threads $threads")
fi
for c in $codecs; do
  slug=$(echo "$c" | tr -d '()')
  write_cmds+=(-n "sluice $c" "$sluice -q sql -e \"$select\" --table lineitem=$data/lineitem/ --out $out/$slug/ --partition-by l_returnflag,l_linestatus --threads $threads --compression '$c'")
done
echo "## Write: lineitem CSV -> Parquet partitioned by (l_returnflag, l_linestatus)"
hyperfine --warmup 1 --runs "$runs" --export-markdown "$out/write.md" "${write_cmds[@]}" >&2
cat "$out/write.md"

echo
echo "## Output size and read-back time (sluice / DuckDB reading it)"
echo "| output | bytes | rows | sluice read s | DuckDB read s |"
echo "|---|---|---|---|---|"
for d in duckdb $(for c in $codecs; do echo "$c" | tr -d '()'; done); do
  bytes=$(find "$out/$d" -name '*.parquet' -printf '%s\n' | awk '{s += $1} END {print s}')
  rows=$("$py" -c "import duckdb; print(duckdb.sql(\"SELECT COUNT(*) FROM read_parquet('$out/$d/**/*.parquet')\").fetchone()[0])")
  hyperfine --warmup 1 --runs "$runs" --export-json "$out/read-$d.json" \
    -n sluice "$sluice -q sql -e \"$scan\" --table t=$out/$d/ --threads $threads" \
    -n duckdb "$py $out/duck_read.py $out/$d $threads \"$scan\"" >/dev/null 2>&1
  times=$("$py" -c "import json; r = json.load(open('$out/read-$d.json'))['results']; print(' | '.join(f\"{x['mean']:.3f}\" for x in r))")
  echo "| $d | $bytes | $rows | $times |"
done
