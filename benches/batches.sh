#!/usr/bin/env bash
# Benchmark: a model over lineitem run as ~80 monthly work units against the same model as one
# unit, and the rerun of a batched run killed half-way against a full run.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 1 --out /tmp/tpch-sf1
#   bash benches/batches.sh target/release/sluice /tmp/tpch-sf1
#
# Event-time data is usually laid out by time; the source here is lineitem sorted by
# l_shipdate (written once by sluice itself), so each unit's filter prunes row groups.
set -euo pipefail
. "$(dirname "$0")/venv.sh"
need_hyperfine
sluice=$(realpath "${1:?usage: batches.sh SLUICE_BIN TPCH_PARQUET_DIR}")
data=${2:?usage: batches.sh SLUICE_BIN TPCH_PARQUET_DIR}
work=${WORK:-/tmp/sluice-bench-batches}
rm -rf "$work" && mkdir -p "$work/queries"
"$sluice" -q sql -e "SELECT * FROM lineitem ORDER BY l_shipdate" --table "lineitem=$data/lineitem/" --out "$work/data/lineitem/"
sql="SELECT l_orderkey, l_linenumber, l_partkey, l_suppkey, l_quantity,
  l_extendedprice * (1 - l_discount) AS net_price, l_returnflag, l_linestatus, l_shipdate,
  CAST(date_trunc('month', l_shipdate) AS DATE) AS ship_month
FROM lineitem WHERE l_quantity > 5"
echo "$sql" > "$work/queries/monthly.sql"
echo "$sql" > "$work/queries/whole.sql"
cat > "$work/sluice.toml" <<TOML
name = "batches"
[sources.lineitem]
location = "data/lineitem/"
event_time = "l_shipdate"
[models.monthly.batches]
size = "month"
max_concurrent_units = 2
[models.monthly.sink]
partition_by = ["ship_month"]
[models.whole.sink]
partition_by = ["ship_month"]
TOML
cd "$work"
"$sluice" plan . | grep -E "units:|warning" || true
hyperfine --warmup 1 --runs "${RUNS:-3}" --export-markdown "$work/units.md" \
  -n one-unit "$sluice -q run . --select whole --restart" \
  -n monthly-units "$sluice -q run . --select monthly --restart"
cat "$work/units.md"

# Kill a batched run half-way (by units staged), then time the rerun that finishes it.
total=$("$sluice" plan . | sed -n 's/.*units:  \([0-9]*\) (month batches.*/\1/p')
full_start=$(date +%s.%N); "$sluice" -q run . --select monthly --restart; full_end=$(date +%s.%N)
"$sluice" -q run . --select monthly --restart & pid=$!
while :; do
  n=$(ls -d out/monthly/_staging/*/* 2>/dev/null | wc -l)
  [ "$n" -ge $((total / 2)) ] && break
  sleep 0.02
done
kill -9 $pid; wait $pid 2>/dev/null || true
echo "killed after $n of $total units staged"
re_start=$(date +%s.%N); "$sluice" run . --select monthly 2>&1 | grep -i resum || true; re_end=$(date +%s.%N)
python3 -c "f=$full_end-$full_start; r=$re_end-$re_start; print(f'full run {f:.2f} s, rerun after a kill at half-way {r:.2f} s = {r/f:.2f}x')"
