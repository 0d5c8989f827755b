#!/usr/bin/env bash
# Batched units over one big file (issue 13 §9, the nycflights shape): 336,776 flights over
# 2013 in one CSV (time_hour in UTC), a model batched by local day (America/New_York) that
# counts flights per day and origin, partitioned by origin (3 partitions). Each of the 365
# daily units used to read the whole file; now the file is read once and routed to the units,
# and the units' 1,095 small files are merged into one per partition at publish.
#   bash benches/one_big_file.sh SLUICE [SLUICE...]   (each binary timed on the same data)
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/data" "$dir/queries"
python3 - "$dir/data/flights.csv" <<'PY'
import datetime, random, sys
random.seed(2)
base = datetime.datetime(2013, 1, 1, 5)
with open(sys.argv[1], "w") as f:
    f.write("id,time_hour,origin,dep_delay\n")
    for i in range(336776):
        t = base + datetime.timedelta(seconds=int(i * 365 * 86400 / 336776))
        f.write(f"{i},{t:%Y-%m-%d %H:%M:%S},{random.choice(['EWR', 'JFK', 'LGA'])},{random.randrange(-10, 200)}\n")
PY
cat > "$dir/sluice.toml" <<'TOML'
name = "one_big_file"
[sources.flights]
location = "data/"
format = "csv"
event_time = "time_hour"
[models.daily.batches]
size = "day"
timezone = "America/New_York"
[models.daily.sink]
partition_by = ["origin"]
TOML
echo "SELECT date_trunc('day', arrow_cast(arrow_cast(time_hour, 'Timestamp(Nanosecond, Some(\"UTC\"))'), 'Timestamp(Nanosecond, Some(\"America/New_York\"))')) AS day, origin, COUNT(*) AS n, AVG(dep_delay) AS delay FROM flights GROUP BY 1, 2" > "$dir/queries/daily.sql"
for bin in "$@"; do
  rm -rf "$dir/out" "$dir/.sluice"
  start=$(date +%s.%N)
  "$bin" -q run "$dir" --report "$dir/r.json"
  end=$(date +%s.%N)
  files=$(find "$dir/out" -name '*.parquet' | wc -l)
  python3 - "$dir/r.json" "$bin" "$start" "$end" "$files" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"][0]
print(f"{sys.argv[2]}: {float(sys.argv[4]) - float(sys.argv[3]):.2f} s, {m['units_total']} units, "
      f"{m['rows_in']} rows in, {m['rows_out']} rows out, {sys.argv[5]} files, "
      f"routed {m.get('routed')}, compacted {m.get('compacted')}")
PY
done
