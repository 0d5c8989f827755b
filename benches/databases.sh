#!/usr/bin/env bash
# Benchmark (issue 14, "Performance"): TPC-H lineitem (SF 1: 6,001,215 rows) between PostgreSQL
# on 127.0.0.1 and Parquet, sluice side by side with other tools, whole processes timed by
# hyperfine in one run on one server.
#
#   cargo build --release
#   bash benches/databases.sh target/release/sluice [WORK_DIR]
#
# Import (PostgreSQL -> Parquet, zstd; 2 threads, 2 connections, ranges of l_orderkey):
#   - sluice run of a pipeline: [databases.app] max_connections = 2, a source on table lineitem
#     read in ranges of its pages (no partition_column: "pages"), or with partition_column =
#     "l_orderkey" and partitions = 2 (and 8), [settings] threads = 2, a model SELECT * FROM
#     lineitem written to out/ as Parquet;
#   - ConnectorX: read_sql("SELECT * FROM lineitem", partition_on="l_orderkey",
#     partition_num=2, return_type="arrow"), then pyarrow.parquet.write_table (zstd);
#   - DuckDB 1.5.5 with its postgres extension (the duckdb-extension-postgres wheel, loaded from
#     the wheel's file: nothing is downloaded): threads = 2, pg_connection_limit = 2,
#     COPY (SELECT * FROM pg.public.lineitem) TO 'x.parquet' (FORMAT parquet, COMPRESSION zstd).
#   Each output is checked: row count, sum(l_quantity), sum(l_extendedprice) as in PostgreSQL.
# Load (Parquet or CSV -> PostgreSQL, into an empty table without indexes, truncated and
# checkpointed before each run):
#   - sluice run of a model SELECT * FROM the lineitem Parquet with
#     [models.lineitem_copy.sink] database = "serving", mode = "overwrite" (binary COPY; the
#     run also writes the model's Parquet mirror: the split is printed from the run reports);
#   - psql \copy lineitem_copy FROM 'lineitem.csv' CSV.
#
# Needs: hyperfine; PostgreSQL's Debian package (scripts/ensure-test-databases installs it as
# root); python3 with venv and PyPI for a venv at $VENV (default ~/.cache/sluice-bench-venv:
# connectorx, pyarrow, duckdb==1.5.5, duckdb-extension-postgres==1.5.5, made when missing).
# The server is a throwaway one started here (initdb into a temporary folder, run as user
# sluice-test via setpriv when root, a free port on 127.0.0.1, user sluice with a password),
# stopped and removed on exit. Data (the Parquet, one CSV of lineitem) is kept in WORK_DIR
# (default /tmp/sluice-db-bench) for the next run: about 2 GB with the outputs; the server's
# folder takes a few GB more while it runs (two 1 GB tables, WAL up to max_wal_size).
# DuckDB cannot download extensions here: the duckdb-extension-postgres wheel ships the signed
# extension as postgres.duckdb_extension, and DuckDB derives the entry point from the file
# name, so databases.py links it as postgres_scanner.duckdb_extension and LOADs that.
#
# Environment: RUNS (hyperfine runs per command, default 3), PARTITIONS (sluice's ranges:
# "pages", or a number of l_orderkey ranges; default "pages 2 8"), SCALE (TPC-H scale, default 1), VENV, SLUICE_PG_BIN (PostgreSQL's bin folder).
# Prints hyperfine's tables, the checks and a summary; writes them to WORK_DIR/results.md.
set -euo pipefail
usage="usage: databases.sh SLUICE_BIN [WORK_DIR]"
sluice=$(realpath "${1:?$usage}")
work=$(mkdir -p "${2:-/tmp/sluice-db-bench}" && realpath "${2:-/tmp/sluice-db-bench}")
RUNS=${RUNS:-3}
PARTITIONS=${PARTITIONS:-"pages 2 8"}
SCALE=${SCALE:-1}
VENV=${VENV:-$HOME/.cache/sluice-bench-venv}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
results=$work/results.md
log() { echo "== $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# --- tools ------------------------------------------------------------------------------
command -v hyperfine >/dev/null || { echo "hyperfine missing (apt-get install hyperfine)" >&2; exit 1; }
. "$here/venv.sh"
bench_venv connectorx duckdb-extension-postgres==1.5.5
py() { "$VENV/bin/python" "$here/databases.py" "$@"; }
pg_bin=${SLUICE_PG_BIN:-$(bash "$repo/scripts/ensure-test-databases")}

# --- data -------------------------------------------------------------------------------
data=$work/tpch-sf$SCALE
if [ ! -f "$data/lineitem/_SUCCESS" ]; then
    log "generating TPC-H SF $SCALE into $data"
    rm -rf "$data"
    "$sluice" -q gen tpch --scale "$SCALE" --out "$data"
fi
csv=$work/lineitem-sf$SCALE.csv
if [ ! -f "$csv" ]; then
    log "writing $csv"
    py csv "$data/lineitem" "$csv.tmp"
    mv "$csv.tmp" "$csv"
fi

# --- a throwaway PostgreSQL server ------------------------------------------------------
server_user=sluice-test
pg_dir=$(mktemp -d /tmp/sluice-db-bench-pg.XXXXXX)
pg_pid=
stop_server() {
    if [ -n "$pg_pid" ] && kill -0 "$pg_pid" 2>/dev/null; then
        as_server "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -t 60 -w stop >/dev/null 2>&1 ||
            kill -KILL "$pg_pid" 2>/dev/null || true
        wait "$pg_pid" 2>/dev/null || true
    fi
    rm -rf "$pg_dir"
}
trap stop_server EXIT
trap 'exit 130' INT TERM
as_server=() # (setpriv execs the server: $! below is the postmaster's pid)
[ "$(id -u)" = 0 ] && as_server=(setpriv --reuid="$server_user" --regid="$server_user" --init-groups --)
as_server() { "${as_server[@]}" "$@"; }
password=bench-sluice-pw
echo "$password" > "$pg_dir/pw"
if [ "$(id -u)" = 0 ]; then
    id "$server_user" >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin "$server_user"
    chown -R "$server_user:" "$pg_dir"
fi
as_server "$pg_bin/initdb" -D "$pg_dir/data" -U sluice --pwfile "$pg_dir/pw" \
    --auth-local=trust --auth-host=scram-sha-256 --no-locale -E UTF8 >"$pg_dir/initdb.log" 2>&1 ||
    { cat "$pg_dir/initdb.log" >&2; exit 1; }
port=$(py free-port)
# Durable (fsync on, as a production server); room for the 6 M rows in shared buffers and WAL
# without forced checkpoints during a load.
"${as_server[@]}" "$pg_bin/postgres" -D "$pg_dir/data" -p "$port" -k "$pg_dir" -h 127.0.0.1 \
    -c shared_buffers=2GB -c max_wal_size=8GB -c max_connections=50 \
    >"$pg_dir/server.log" 2>&1 &
pg_pid=$!
for i in $(seq 1 60); do
    "$pg_bin/pg_isready" -q -h "$pg_dir" -p "$port" && break
    kill -0 "$pg_pid" 2>/dev/null || { cat "$pg_dir/server.log" >&2; exit 1; }
    [ "$i" = 60 ] && { echo "PostgreSQL did not start in 60 s" >&2; cat "$pg_dir/server.log" >&2; exit 1; }
    sleep 1
done
psql() { "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$pg_dir" -p "$port" -U sluice "$@"; }
psql -d postgres -c "CREATE DATABASE bench"
export BENCH_PG_URL="postgres://sluice:$password@127.0.0.1:$port/bench"
psql_cmd="$pg_bin/psql -X -q -v ON_ERROR_STOP=1 -h $pg_dir -p $port -U sluice -d bench"

# CPU accounting of one run: the client's (GNU time: user + sys, with its children; peak
# RSS) and the server's (the postmaster's reaped children, i.e. the backends that served the
# run's connections: cutime + cstime, in clock ticks).
server_ticks() { awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$pg_pid/stat"; }
tick=$(getconf CLK_TCK)
cpu_rows=()
cpu_run() { # NAME PREPARE COMMAND
    sh -c "$2" >/dev/null
    local before after t
    before=$(server_ticks)
    /usr/bin/time -o "$work/time.txt" -f '%e %U %S %M' sh -c "$3" >/dev/null 2>&1 ||
        echo "cpu run of $1 failed" >&2
    t=$(tail -1 "$work/time.txt")
    sleep 1 # (the backends exit just after their clients close)
    after=$(server_ticks)
    cpu_rows+=("$(echo "$1 $t $before $after $tick" | awk '{ printf "| %s | %.2f s | %.2f s | %.2f s | %.0f MB |", $1, $2, $3 + $4, ($7 - $6) / $8, $5 / 1024 }')")
}

columns="l_orderkey int8, l_partkey int8, l_suppkey int8, l_linenumber int4,
  l_quantity numeric(15,2), l_extendedprice numeric(15,2), l_discount numeric(15,2),
  l_tax numeric(15,2), l_returnflag text, l_linestatus text, l_shipdate date,
  l_commitdate date, l_receiptdate date, l_shipinstruct text, l_shipmode text, l_comment text"
log "loading lineitem into PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on port $port"
start=$(date +%s.%N)
psql -d bench -c "CREATE TABLE lineitem ($columns)"
psql -d bench -c "\\copy lineitem FROM '$csv' CSV"
psql -d bench -c "ALTER TABLE lineitem ADD PRIMARY KEY (l_orderkey, l_linenumber)"
psql -d bench -c "VACUUM (FREEZE, ANALYZE) lineitem"
psql -d bench -c "CREATE TABLE lineitem_copy ($columns)"
psql -d bench -c "CHECKPOINT"
log "loaded in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}") s: $(psql -d bench -c "SELECT pg_size_pretty(pg_total_relation_size('lineitem'))")"
sums="SELECT count(*) || '|' || sum(l_quantity) || '|' || sum(l_extendedprice) FROM"
expect=$(psql -d bench -c "$sums lineitem")
log "PostgreSQL lineitem: rows|sum(l_quantity)|sum(l_extendedprice) = $expect"

{
    echo "# sluice database benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "- sluice: $("$sluice" --version) ($sluice; this script's tree at $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "- PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'), shared_buffers=2GB, max_wal_size=8GB, fsync on; ConnectorX $("$VENV/bin/python" -c 'import connectorx; print(connectorx.__version__)'), pyarrow $("$VENV/bin/python" -c 'import pyarrow; print(pyarrow.__version__)'), DuckDB $("$VENV/bin/python" -c 'import duckdb; print(duckdb.__version__)')"
    echo "- rows: $expect (rows|sum(l_quantity)|sum(l_extendedprice))"
    echo
} >"$results"

# --- import: PostgreSQL -> Parquet --------------------------------------------------------
names=() cmds=() preps=() outs=()
for p in $PARTITIONS; do
    d=$work/import-p$p
    rm -rf "$d"
    mkdir -p "$d/queries"
    cat >"$d/sluice.toml" <<EOF
name = "import"

[settings]
threads = 2

[databases.app]
url = "\${env:BENCH_PG_URL}"
max_connections = 2

[sources.lineitem]
database = "app"
table = "lineitem"
EOF
    if [ "$p" = pages ]; then
        # No partition_column: one range of the table's pages (ctid) per connection.
        names+=("sluice-pages")
    else
        printf 'partition_column = "l_orderkey"\npartitions = %s\n' "$p" >>"$d/sluice.toml"
        names+=("sluice-partitions-$p")
    fi
    echo "SELECT * FROM lineitem" >"$d/queries/lineitem_pq.sql"
    cmds+=("$sluice -q run $d")
    preps+=("rm -rf $d/out $d/.sluice")
    outs+=("$d/out/lineitem_pq")
done
names+=(connectorx-2 duckdb-postgres)
cmds+=("$VENV/bin/python $here/databases.py connectorx $BENCH_PG_URL $work/connectorx.parquet 2"
    "$VENV/bin/python $here/databases.py duckdb $BENCH_PG_URL $work/duckdb.parquet 2")
preps+=("rm -f $work/connectorx.parquet" "rm -f $work/duckdb.parquet")
outs+=("$work/connectorx.parquet" "$work/duckdb.parquet")
args=()
for i in "${!names[@]}"; do
    args+=(-n "${names[$i]}" --prepare "${preps[$i]}" "${cmds[$i]}")
done
log "import benchmark: load average $(loadavg)"
import_load_before=$(loadavg)
hyperfine --warmup 1 --runs "$RUNS" --export-json "$work/import.json" \
    --export-markdown "$work/import.md" "${args[@]}"
import_load_after=$(loadavg)
for i in "${!names[@]}"; do cpu_run "${names[$i]}" "${preps[$i]}" "${cmds[$i]}"; done
import_checks=()
failed=0
for i in "${!names[@]}"; do
    got=$(py check "${outs[$i]}")
    [ "$got" = "$expect" ] && ok=same || ok="DIFFERENT (want $expect)"
    import_checks+=("${names[$i]}: $got $ok")
    [ "$ok" = same ] || { echo "import check failed: ${names[$i]}: $got, want $expect" >&2; failed=1; }
done

# --- load: Parquet / CSV -> PostgreSQL ----------------------------------------------------
d=$work/load
rm -rf "$d"
mkdir -p "$d/queries" "$d/reports"
cat >"$d/sluice.toml" <<EOF
name = "load"

[settings]
threads = 2

[databases.serving]
url = "\${env:BENCH_PG_URL}"
max_connections = 2

[sources.lineitem]
location = "$data/lineitem"
format = "parquet"

[models.lineitem_copy.sink]
database = "serving"
table = "lineitem_copy"
mode = "overwrite"
EOF
echo "SELECT * FROM lineitem" >"$d/queries/lineitem_copy.sql"
truncate="$psql_cmd -c 'TRUNCATE lineitem_copy' -c CHECKPOINT"
log "load benchmark: load average $(loadavg)"
load_load_before=$(loadavg)
hyperfine --runs "$RUNS" --export-json "$work/load.json" --export-markdown "$work/load.md" \
    -n sluice-load --prepare "$truncate" \
    "$sluice -q run $d --report $d/report.json && cp $d/report.json $d/reports/\$(date +%s%N).json" \
    -n "psql-copy-csv" --prepare "$truncate" \
    "$psql_cmd -c \"\\copy lineitem_copy FROM '$csv' CSV\""
load_load_after=$(loadavg)
cpu_run sluice-load "$truncate" "$sluice -q run $d"
cpu_run psql-copy-csv "$truncate" "$psql_cmd -c \"\\copy lineitem_copy FROM '$csv' CSV\""
got=$(psql -d bench -c "$sums lineitem_copy")
[ "$got" = "$expect" ] && load_check="lineitem_copy after the last run: $got same" ||
    { load_check="lineitem_copy after the last run: $got DIFFERENT (want $expect)"; echo "load check failed: $load_check" >&2; failed=1; }
# The same check after a sluice load (the last run above was psql's).
eval "$truncate"
"$sluice" -q run "$d" --report "$d/report-check.json"
got=$(psql -d bench -c "$sums lineitem_copy")
[ "$got" = "$expect" ] && load_check="$load_check; after a sluice load: $got same" ||
    { load_check="$load_check; after a sluice load: $got DIFFERENT"; echo "load check failed (sluice): $got" >&2; failed=1; }

{
    echo "## Import: PostgreSQL lineitem -> Parquet (zstd), 2 threads, 2 connections"
    echo
    echo "load average before / after: $import_load_before / $import_load_after"
    echo
    cat "$work/import.md"
    echo
    for c in "${import_checks[@]}"; do echo "- check $c"; done
    echo
    echo "## Load: 6 M rows into an empty PostgreSQL table"
    echo
    echo "load average before / after: $load_load_before / $load_load_after"
    echo
    cat "$work/load.md"
    echo
    echo "- check $load_check"
    echo
    echo "CPU of one more run of each (client: user + sys of the command and its children;"
    echo "server: the PostgreSQL backends that served it):"
    echo
    echo "| command | wall | client CPU | server CPU | client peak RSS |"
    echo "|---|---|---|---|---|"
    for r in "${cpu_rows[@]}"; do echo "$r"; done
    echo
    echo "sluice's runs (from --report): whole run, of which the load into PostgreSQL (rows):"
    echo
    "$VENV/bin/python" - "$d"/reports/*.json <<'EOF'
import json, sys
for f in sys.argv[1:]:
    r = json.load(open(f))
    for m in r["models"]:
        l = m.get("loaded") or {}
        print(f"- {m['elapsed_ms']} ms, load {l.get('elapsed_ms')} ms "
              f"({l.get('rows')} rows, {l.get('bytes')} bytes, already_loaded={l.get('already_loaded')}); "
              f"the Parquet mirror and the rest {m['elapsed_ms'] - (l.get('elapsed_ms') or 0)} ms")
EOF
} >>"$results"
cat "$results"
[ "$failed" = 0 ] || { echo "some outputs differ: the figures compare different work" >&2; exit 1; }
