#!/usr/bin/env bash
# Time units over CSV files: a model batched by day over 60 daily CSV files (50,000 rows
# each, 3,000,000 in all, 94 MB). Each unit should read the file of its day, not all 60.
#   bash benches/time_units_csv.sh SLUICE [SLUICE...]   (each binary timed on the same data)
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/data" "$dir/queries"
python3 - "$dir/data" <<'PY'
import datetime, random, sys
random.seed(1)
i, base = 0, datetime.date(2024, 1, 1)
for d in range(60):
    day = (base + datetime.timedelta(days=d)).isoformat()
    with open(f"{sys.argv[1]}/events-{d:02d}.csv", "w") as f:
        f.write("id,amount,ts\n")
        for r in range(50000):
            i += 1
            f.write(f"{i},{random.randint(1, 10000)},{day} {r % 24:02d}:{r % 60:02d}:00\n")
PY
cat > "$dir/sluice.toml" <<'TOML'
name = "time_units_csv"
[sources.events]
location = "data/"
format = "csv"
schema = "id BIGINT, amount INT, ts VARCHAR"
event_time = "ts"
[models.daily.sink]
location = "out/daily/"
[models.daily.batches]
size = "day"
TOML
echo "SELECT id, amount, ts FROM events" > "$dir/queries/daily.sql"
for bin in "$@"; do
  rm -rf "$dir/out" "$dir/.sluice"
  start=$(date +%s.%N)
  "$bin" -q run "$dir" --report "$dir/r.json"
  end=$(date +%s.%N)
  python3 - "$dir/r.json" "$bin" "$start" "$end" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"][0]
print(f"{sys.argv[2]}: {float(sys.argv[4]) - float(sys.argv[3]):.2f} s, {m['units_total']} units, rows: {m['row_balance']}")
PY
done
