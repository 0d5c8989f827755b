#!/usr/bin/env bash
# Benchmark: transform TPC-H lineitem CSV (cast, derive, filter) into Parquet partitioned by
# (l_returnflag, l_linestatus), with sluice and with DuckDB's COPY ... PARTITION_BY, whole
# processes timed by hyperfine on the same machine.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 1 --format csv --out /tmp/tpch-sf1-csv
#   pip install duckdb   # in a venv; DUCKDB_PYTHON below points at its python
#   bash benches/lineitem_partition.sh target/release/sluice /tmp/tpch-sf1-csv
set -euo pipefail
. "$(dirname "$0")/venv.sh"
need_hyperfine
sluice=${1:?usage: lineitem_partition.sh SLUICE_BIN CSV_DATA_DIR}
data=${2:?usage: lineitem_partition.sh SLUICE_BIN CSV_DATA_DIR}
py=${DUCKDB_PYTHON:-python3}
out=${OUT:-/tmp/sluice-bench-out}
threads=${THREADS:-$(nproc)}

select="SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber,
  CAST(l_quantity AS INTEGER) AS quantity,
  CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(15,2)) AS net_price,
  CAST(l_extendedprice * (1 - l_discount) * (1 + l_tax) AS DECIMAL(15,2)) AS charge,
  l_shipdate, CAST(date_part('year', l_shipdate) AS INTEGER) AS ship_year,
  l_shipmode, l_returnflag, l_linestatus
FROM lineitem WHERE l_shipmode <> 'MAIL'"

cat > "$out.duck.py" <<PY
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads = $threads")
con.execute("CREATE VIEW lineitem AS SELECT * FROM read_csv('$data/lineitem/*.csv', header = true)")
con.execute("""COPY ($select) TO '$out/duckdb' (FORMAT parquet, COMPRESSION zstd,
  PARTITION_BY (l_returnflag, l_linestatus), OVERWRITE_OR_IGNORE)""")
PY

hyperfine --warmup 1 --runs "${RUNS:-3}" --export-markdown "$out.md" \
  -n sluice "$sluice -q sql -e \"$select\" --table lineitem=$data/lineitem/ --out $out/sluice/ --partition-by l_returnflag,l_linestatus --threads $threads" \
  -n duckdb "$py $out.duck.py"
cat "$out.md"
# Same rows on both sides.
"$sluice" -q sql -e "SELECT COUNT(*) AS rows, SUM(quantity) AS qty FROM t" --table t=$out/sluice/
$py -c "import duckdb; print(duckdb.sql(\"SELECT COUNT(*) AS rows, SUM(quantity) AS qty FROM read_parquet('$out/duckdb/**/*.parquet')\").fetchall())"
