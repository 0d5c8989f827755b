#!/usr/bin/env bash
# Benchmark: a clean CSV read with on_bad_rows = "quarantine" (sluice's own scan) against the
# plain read (DataFusion's CSV reader): TPC-H lineitem SF 1 (6 M rows, 738 MB), a query that
# touches all 16 columns, the same declared schema; whole runs timed by hyperfine.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 1 --format csv --out /tmp/tpch-sf1-csv
#   bash benches/quarantine.sh target/release/sluice /tmp/tpch-sf1-csv
set -euo pipefail
. "$(dirname "$0")/venv.sh"
need_hyperfine
sluice=${1:?usage: quarantine.sh SLUICE_BIN CSV_DATA_DIR}
data=${2:?usage: quarantine.sh SLUICE_BIN CSV_DATA_DIR}
work=${OUT:-/tmp/sluice-quarantine-bench}
schema="l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT, l_quantity DECIMAL(15,2), l_extendedprice DECIMAL(15,2), l_discount DECIMAL(15,2), l_tax DECIMAL(15,2), l_returnflag VARCHAR, l_linestatus VARCHAR, l_shipdate DATE, l_commitdate DATE, l_receiptdate DATE, l_shipinstruct VARCHAR, l_shipmode VARCHAR, l_comment VARCHAR"
query="SELECT COUNT(*) AS n, SUM(l_orderkey) AS k, SUM(l_partkey) AS p, SUM(l_suppkey) AS s,
  SUM(l_linenumber) AS ln, SUM(l_quantity) AS q, SUM(l_extendedprice) AS e, SUM(l_discount) AS d,
  SUM(l_tax) AS t, MAX(l_returnflag) AS rf, MAX(l_linestatus) AS ls, MAX(l_shipdate) AS sd,
  MIN(l_commitdate) AS cd, MIN(l_receiptdate) AS rd, MAX(l_shipinstruct) AS si,
  MAX(l_shipmode) AS sm, MAX(LENGTH(l_comment)) AS c FROM lineitem"
for mode in fail quarantine; do
  rm -rf "$work/$mode"
  mkdir -p "$work/$mode/data" "$work/$mode/queries"
  # The CSV files alone (not the folder, whose _MANIFEST would make it a sluice output).
  for f in "$data"/lineitem/*.csv; do ln -s "$f" "$work/$mode/data/"; done
  cat > "$work/$mode/sluice.toml" <<TOML
[sources.lineitem]
location = "data/"
format = "csv"
schema = "$schema"
on_bad_rows = "$mode"
[models.totals.sink]
location = "out/totals/"
format = "csv"
TOML
  echo "$query" > "$work/$mode/queries/totals.sql"
done
hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$work/times.md" \
  -n plain "$sluice -q run $work/fail" \
  -n quarantine "$sluice -q run $work/quarantine"
cat "$work/times.md"
# Same answer both ways, no row rejected.
cat "$work/fail/out/totals/"*.csv
cat "$work/quarantine/out/totals/"*.csv
ls "$work/quarantine/.sluice/rejects" 2>/dev/null && echo "rejects written (unexpected)" || echo "no rejects"
