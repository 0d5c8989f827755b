#!/usr/bin/env bash
# Benchmark: TPC-H Q1-Q22 with `sluice bench tpch` locally (2 threads) against the same
# queries on a Ballista cluster of one scheduler and two executors of one slot each, all
# `sluice cluster` processes on 127.0.0.1, over the same Parquet files. Answers are checked by
# the bench in both runs; the cluster run prints each query's stages, tasks and the bytes
# moved between stages.
#
#   cargo build --release
#   target/release/sluice gen tpch --scale 10 --out /tmp/tpch-sf10
#   bash benches/cluster.sh target/release/sluice /tmp/tpch-sf10
#
# Runs alternate (local, cluster, local, cluster...) so a noisy neighbour hits both. Each
# cluster answer is compared, every value, with the local run's (the bench's `digest`); the
# script fails when one differs.
set -euo pipefail
sluice=${1:?usage: cluster.sh SLUICE_BIN DATA_DIR}
data=${2:?usage: cluster.sh SLUICE_BIN DATA_DIR}
rounds=${ROUNDS:-1}
out=${OUT:-/tmp/sluice-cluster-bench}
mkdir -p "$out"

port=$((20000 + RANDOM % 20000))
"$sluice" cluster scheduler --bind "127.0.0.1:$port" 2>"$out/scheduler.log" &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
sleep 1
for i in 0 1; do
  "$sluice" cluster executor --scheduler "127.0.0.1:$port" \
    --bind "127.0.0.1:$((port + 10 + 2 * i))" --flight-port "$((port + 11 + 2 * i))" \
    --slots 1 --work-dir "$out/executor-$i" 2>"$out/executor-$i.log" &
  pids+=($!)
done
sleep 2

for round in $(seq 1 "$rounds"); do
  echo "== round $round: local, 2 threads"
  "$sluice" -q bench tpch --data "$data" --threads 2 --json "$out/local-$round.json"
  echo "== round $round: cluster, 1 scheduler + 2 executors x 1 slot"
  "$sluice" -q bench tpch --data "$data" --threads 2 --cluster "df://127.0.0.1:$port" \
    --json "$out/cluster-$round.json"
done

python3 - "$out" "$rounds" <<'EOF'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
best = lambda r: min(r["iterations_ms"])
wrong = set()
def same(l, c):
    # Every row's values, order aside, against the local run's (`digest` in the JSON).
    if l["digest"] == c["digest"] and l["rows"] == c["rows"]:
        return "= local"
    wrong.add(f"q{l['query']}")
    return "**differs**"
for round in range(1, rounds + 1):
    local = {q["query"]: q for q in json.load(open(f"{out}/local-{round}.json"))["queries"]}
    cluster = {q["query"]: q for q in json.load(open(f"{out}/cluster-{round}.json"))["queries"]}
    print(f"| query | local ms | cluster ms | ratio | stages | tasks | moved between stages | of it, read whole by each task | queued ms | answer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    lt = ct = moved = whole = 0
    for q in sorted(local):
        l, c = best(local[q]), best(cluster[q])
        job = cluster[q].get("job") or {}
        lt += l; ct += c; moved += job.get("shuffle_bytes", 0); whole += job.get("whole_read_bytes", 0)
        print(f"| q{q} | {l:.0f} | {c:.0f} | {c / l:.2f} | {job.get('stages', '')} | "
              f"{job.get('tasks', '')} | {job.get('shuffle_bytes', 0) / 2**20:.1f} MiB | "
              f"{job.get('whole_read_bytes', 0) / 2**20:.1f} MiB | "
              f"{job.get('queued_ms', '')} | {same(local[q], cluster[q])} |")
    print(f"| total | {lt:.0f} | {ct:.0f} | {ct / lt:.2f} | | | {moved / 2**20:.0f} MiB | "
          f"{whole / 2**20:.0f} MiB | | |")
if wrong:
    print(f"ANSWERS DIFFER from the local run's: {', '.join(sorted(wrong))}")
    sys.exit(1)
EOF
