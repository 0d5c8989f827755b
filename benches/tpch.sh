#!/usr/bin/env bash
# Benchmark: `sluice bench tpch` against plain DataFusion (benches/tpch_datafusion.rs) running
# the same 22 queries over the same Parquet data, whole processes timed by hyperfine.
#
#   cargo build --release && cargo build --release --bench tpch_datafusion
#   target/release/sluice gen tpch --scale 1 --out /tmp/tpch-sf1
#   bash benches/tpch.sh target/release/sluice target/release/deps/tpch_datafusion-HASH /tmp/tpch-sf1
set -euo pipefail
. "$(dirname "$0")/venv.sh"
need_hyperfine
sluice=${1:?usage: tpch.sh SLUICE_BIN DATAFUSION_BASELINE_BIN DATA_DIR}
baseline=${2:?usage: tpch.sh SLUICE_BIN DATAFUSION_BASELINE_BIN DATA_DIR}
data=${3:?usage: tpch.sh SLUICE_BIN DATAFUSION_BASELINE_BIN DATA_DIR}
hyperfine --warmup 1 --runs "${RUNS:-3}" --export-markdown /tmp/sluice-tpch-bench.md \
  -n sluice "$sluice -q bench tpch --data $data" \
  -n datafusion "$baseline $data"
cat /tmp/sluice-tpch-bench.md
