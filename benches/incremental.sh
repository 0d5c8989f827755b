#!/usr/bin/env bash
# Incremental models on a year of daily event files (issue 13's benchmark).
#   bash benches/incremental.sh SLUICE [DAYS] [ROWS_PER_DAY] [SMALL_FILES]
# defaults: 365 days x 200,000 rows (73 M rows, Parquet), 10,000 small files.
#
# 1. full run over DAYS daily files (every period computed)           -> T0
# 2. one new day + 3 late files of 1,000 rows (the last two days: inside the 48 h window; day
#    DAYS/3: beyond it)                                                -> T1 (goal: <= 5 % of T0)
# 3. the same clock again: nothing changed (listing + comparison)     -> T2
# 4. the same timeline with a dbt-style fixed lookback of 3 days and no window: rows it
#    recomputes, and late rows it leaves out without a word (sluice: 0; it counts and lists them)
# (DuckDB, when the Python has it, recomputes the whole result once, for reference.)
# 5. a no-change run over SMALL_FILES small daily files, batched by month (listing +
#    comparison with the output's periods and the state store's cache, local disk)
# Needs python3 with pyarrow (scripts/ensure-test-venv installs one in ~/.cache/sluice/test-venv).
set -euo pipefail
bin=$(realpath "$1")
days=${2:-365}
rows=${3:-200000}
small=${4:-10000}
py=${PYTHON:-$HOME/.cache/sluice/test-venv/bin/python}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

write_days() { # folder first-day last-day rows-per-day [name]: one file a day, ids by day
  "$py" - "$@" <<'PY'
import sys
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
folder, d0, d1, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
name = sys.argv[5] if len(sys.argv) > 5 else None
step = pa.array(range(n), pa.int64())
for day in range(d0, d1 + 1):
    first = (day * n) if name is None else 900_000_000 + day * n
    ids = pc.add(step, first)
    amount = pc.subtract(ids, pc.multiply(pc.divide(ids, 997), 997))
    base = 1_704_067_200_000_000 + day * 86_400_000_000  # 2024-01-01 UTC + day
    ts = pc.add(pc.multiply(pc.divide(pc.multiply(step, 86399), n), 1_000_000), base).cast(pa.timestamp("us"))
    pq.write_table(pa.table({"id": ids, "amount": amount, "ts": ts}),
                   f"{folder}/{name or 'events'}-{day:03d}.parquet")
PY
}

pipeline() { # folder extra-batches-keys
  mkdir -p "$1/data" "$1/queries"
  cat > "$1/sluice.toml" <<TOML
name = "events"
[sources.events]
location = "data/"
format = "parquet"
event_time = "ts"
[models.daily]
materialized = "incremental"
[models.daily.batches]
size = "day"
start = "2024-01-01"
max_concurrent_units = 2
$2
TOML
  echo "SELECT CAST(ts AS DATE) AS day, COUNT(*) AS n, SUM(amount) AS amount FROM events GROUP BY 1" \
    > "$1/queries/daily.sql"
}

clock() { date -u -d "2024-01-01 + $1 days" +%Y-%m-%dT00:00:00Z; }

run() { # folder as-of-day label
  local start end
  start=$(date +%s.%N)
  "$bin" -q run "$1" --as-of "$(clock "$2")" --report "$1/r.json" || true
  end=$(date +%s.%N)
  "$py" - "$1/r.json" "$3" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); m = r["models"][0]; l = m.get("late") or {}
print(f"{sys.argv[2]:<34} {float(sys.argv[4]) - float(sys.argv[3]):>8.2f} s  units {m['units_total']:>4}  "
      f"rows in {m['rows_in']:>10}  on time {l.get('rows_on_time', 0):>9}  "
      f"late in window {l.get('rows_late_in_window', 0):>5}  beyond {l.get('rows_late_beyond_window', 0):>5}  "
      f"needing backfill {[b['period'] for b in l.get('periods_needing_backfill', [])]}")
PY
}

echo "generating $days daily files x $rows rows ..."
for label in window lookback; do
  keys='late_window = "48h"'
  [ "$label" = lookback ] && keys=$'late_window = "0h"\nlookback = 3'
  pipeline "$dir/$label" "$keys"
done
write_days "$dir/window/data" 0 $((days - 1)) "$rows"
cp "$dir/window/data/"*.parquet "$dir/lookback/data/"

for label in window lookback; do
  p="$dir/$label"
  echo "--- $label: $(grep -E 'late_window|lookback' "$p/sluice.toml" | tr '\n' ' ')"
  run "$p" "$days" "1. full run ($days days)"
  if [ "$label" = window ] && "$py" -c 'import duckdb' 2>/dev/null; then
    # The reference: the same result recomputed from all the files, by DuckDB (2 threads).
    "$py" - "$p/data" <<'PY'
import sys, time, duckdb
con = duckdb.connect(); con.execute("SET threads = 2")
t = time.time()
n = con.execute(f"SELECT COUNT(*) FROM (SELECT CAST(ts AS DATE) AS day, COUNT(*) AS n, SUM(amount) "
                f"FROM read_parquet('{sys.argv[1]}/*.parquet') GROUP BY 1)").fetchone()[0]
print(f"{'   DuckDB full recompute (in-process)':<34} {time.time() - t:>8.2f} s  ({n} days)")
PY
  fi
  # Day 2: a new day, late rows for the last two days (inside 48 h) and for day DAYS/3 (beyond).
  write_days "$p/data" "$days" "$days" "$rows"
  write_days "$p/data" $((days - 2)) $((days - 1)) 1000 late
  write_days "$p/data" $((days / 3)) $((days / 3)) 1000 late
  run "$p" $((days + 1)) "2. +1 day, 3 late files"
  run "$p" $((days + 1)) "3. nothing changed"
done

echo "--- $small small files, nothing changed"
p="$dir/small"
pipeline "$p" 'late_window = "48h"'
"$py" - "$p/data" "$small" <<'PY'
import sys, datetime
import pyarrow as pa, pyarrow.parquet as pq
folder, n = sys.argv[1], int(sys.argv[2])
for d in range(n):
    t = datetime.datetime(2000, 1, 1) + datetime.timedelta(days=d)
    pq.write_table(pa.table({"id": pa.array([d], pa.int64()), "amount": pa.array([1], pa.int64()),
                             "ts": pa.array([t], pa.timestamp("us"))}), f"{folder}/e-{d:05d}.parquet")
PY
# (By month: the first run's 330 units, not 10,000; every file is still listed and compared.)
sed -i 's/start = "2024-01-01"/start = "2000-01-01"/; s/size = "day"/size = "month"/' "$p/sluice.toml"
end_day=$(( ( $(date -u -d 2000-01-01 +%s) + small * 86400 - $(date -u -d 2024-01-01 +%s) ) / 86400 + 40 ))
run "$p" "$end_day" "first run ($small files)"
run "$p" "$end_day" "no change ($small files)"

# 6. with MOTO=1: the same no-change run with the small files on an S3 server (moto, started
#    on 127.0.0.1 from the test venv), the output and state on local disk.
if [ "${MOTO:-0}" = 1 ]; then
  echo "--- $small small files on the S3 server (moto), nothing changed"
  port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$(dirname "$py")/moto_server" -p "$port" > "$dir/moto.log" 2>&1 &
  moto=$!
  trap 'kill $moto 2>/dev/null; rm -rf "$dir"' EXIT
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
  sleep 2
  "$py" - "$p/data" "$AWS_ENDPOINT_URL" <<'PY'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
s3 = boto3.client("s3", endpoint_url=sys.argv[2])
s3.create_bucket(Bucket="bench")
names = sorted(os.listdir(sys.argv[1]))
def put(n):
    s3.upload_file(os.path.join(sys.argv[1], n), "bench", f"small/{n}")
with ThreadPoolExecutor(16) as pool:
    list(pool.map(put, names))
print(f"uploaded {len(names)} files")
PY
  q="$dir/s3small"
  pipeline "$q" 'late_window = "48h"'
  sed -i 's/start = "2024-01-01"/start = "2000-01-01"/; s/size = "day"/size = "month"/; s#location = "data/"#location = "s3://bench/small/"#' "$q/sluice.toml"
  run "$q" "$end_day" "first run ($small files on S3)"
  run "$q" "$end_day" "no change ($small files on S3)"
fi
