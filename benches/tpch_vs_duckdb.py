"""TPC-H Q1-Q22 on sluice and on DuckDB, interleaved, whole processes; run by tpch_vs_duckdb.sh.

    python tpch_vs_duckdb.py bench SLUICE_BIN DATA_DIR ROUNDS    (env THREADS, QUERIES, JSON_OUT)
    python tpch_vs_duckdb.py duckdb-one DATA_DIR N THREADS        (one query in this process)

`bench` first checks each selected query's answer once (untimed): sluice's through `sluice sql
... --out DIR` read back with pyarrow, DuckDB's as an Arrow table in this process; then, per
round and per query, it runs one fresh process of each engine, alternating which goes first
each round, and keeps the minimum over rounds. sluice's process is `sluice bench tpch` for that
one query (its JSON gives the query time: planning + execution + collecting the batches);
DuckDB's is `duckdb-one` in a fresh Python (it prints its query time: execute + fetching every
row as Arrow). Process times are wall clock around `subprocess.run`, so DuckDB's include
starting Python and importing duckdb; the header reports that start-up cost on its own.
"""

import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

TABLES = ["lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region"]
HERE = os.path.dirname(os.path.abspath(__file__))
QUERY_DIR = os.path.join(HERE, "..", "queries", "tpch")


def query_file(n):
    return os.path.normpath(os.path.join(QUERY_DIR, f"q{n}.sql"))


def duckdb_sql(n):
    """The query text DuckDB runs: the same file sluice runs, unchanged.

    All 22 texts (q15 is the common-table-expression form of the specification's view
    revenue0) parse and run in DuckDB 1.5.5 as they are, so no rewrite is applied here; if
    one is ever needed it belongs in this function, as the smallest equivalent change, with
    a comment saying why.
    """
    with open(query_file(n)) as f:
        return f.read()


def duckdb_connect(data, threads):
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(threads)}")
    for t in TABLES:
        path = os.path.join(data, t, "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
    return con


def duckdb_run(con, n):
    """Runs query n; returns (seconds, Arrow table with every row)."""
    sql = duckdb_sql(n)
    start = time.perf_counter()
    table = con.execute(sql).to_arrow_table()
    return time.perf_counter() - start, table


def duckdb_one(data, n, threads):
    con = duckdb_connect(data, threads)
    secs, table = duckdb_run(con, int(n))
    print(json.dumps({"query": int(n), "query_s": secs, "rows": table.num_rows}))


# ---------------------------------------------------------------------------------------------
# Answers


def checksums(table):
    """Per column, an order-independent summary: (kind, value, null count)."""
    import pyarrow as pa

    out = []
    for i in range(table.num_columns):
        col = table.column(i)
        typ = col.type
        values = col.to_pylist()
        nulls = sum(v is None for v in values)
        present = [v for v in values if v is not None]
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
            out.append(("sum", math.fsum(float(v) for v in present), nulls))
        else:
            strs = []
            for v in present:
                if hasattr(v, "isoformat"):
                    s = v.isoformat()
                elif isinstance(v, bytes):
                    s = v.decode("utf-8", "replace")
                else:
                    s = str(v)
                strs.append(s.rstrip(" "))
            out.append(("strings", sorted(strs), nulls))
    return out


def close(a, b):
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-6


def show_strings(a, b):
    """The first place two sorted lists differ, briefly."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"sorted value #{i}: sluice {x!r} vs DuckDB {y!r}"
    return f"{len(a)} vs {len(b)} values (one is a prefix of the other)"


def compare(sl, dk):
    """The mismatches between two Arrow tables, as strings (empty when equal)."""
    import pyarrow as pa

    if sl is None:
        return [] if dk.num_rows == 0 else [f"rows: sluice 0 vs DuckDB {dk.num_rows}"]
    problems = []
    if sl.num_rows != dk.num_rows:
        problems.append(f"rows: sluice {sl.num_rows} vs DuckDB {dk.num_rows}")
    if sl.num_columns != dk.num_columns:
        problems.append(f"columns: sluice {sl.num_columns} vs DuckDB {dk.num_columns}")
        return problems
    for i, (a, b) in enumerate(zip(checksums(sl), checksums(dk))):
        name = f"column {i + 1} ({sl.column_names[i]} / {dk.column_names[i]})"
        if a[0] != b[0]:
            problems.append(
                f"{name}: sluice type {sl.schema.field(i).type} vs DuckDB {dk.schema.field(i).type}"
            )
        elif a[0] == "sum" and not close(a[1], b[1]):
            types = [sl.schema.field(i).type, dk.schema.field(i).type]
            scales = [t.scale for t in types if pa.types.is_decimal(t)]
            # A decimal answer may differ from DuckDB's double by one unit of its last
            # decimal place per row: DataFusion truncates a decimal AVG (TPC-H allows 1 %).
            if not (scales and abs(a[1] - b[1]) <= sl.num_rows * 10.0 ** -min(scales)):
                problems.append(f"{name}: sum sluice {a[1]!r} vs DuckDB {b[1]!r}")
        elif a[0] == "strings" and a[1] != b[1]:
            problems.append(f"{name}: {show_strings(a[1], b[1])}")
        if a[2] != b[2]:
            problems.append(f"{name}: nulls sluice {a[2]} vs DuckDB {b[2]}")
    return problems


def sluice_answer(sluice, data, n, threads, tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = os.path.join(tmp, f"q{n}")
    cmd = [sluice, "-q", "sql", query_file(n)]
    for t in TABLES:
        cmd += ["--table", f"{t}={os.path.join(data, t)}/"]
    cmd += ["--threads", str(threads), "--format", "parquet", "--out", out, *sluice_flags()]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    parts = sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
    if not parts:
        # An empty answer is a published output with no files (q11 at SF 10 keeps no row
        # with the SF 1 substitution parameter): None, compared by its row count alone.
        if not os.path.exists(os.path.join(out, "_MANIFEST")):
            raise RuntimeError(f"q{n}: sluice published no output in {out}")
        return None
    tables = [pq.read_table(p) for p in parts]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


# ---------------------------------------------------------------------------------------------
# Timing


def run_sluice(sluice, data, n, threads, tmp, flags=()):
    path = os.path.join(tmp, f"bench-q{n}.json")
    cmd = [sluice, "-q", "bench", "tpch", "--data", data, "--queries", str(n),
           "--threads", str(threads), "--json", path, *flags]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    process = time.perf_counter() - start
    with open(path) as f:
        (q,) = json.load(f)["queries"]
    return {"query_s": min(q["iterations_ms"]) / 1000.0, "process_s": process,
            "rows": q["rows"], "digest": q["digest"]}


def run_duckdb(data, n, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "duckdb-one", data, str(n), str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    process = time.perf_counter() - start
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"query_s": r["query_s"], "process_s": process, "rows": r["rows"]}


def duckdb_startup():
    """Seconds for a fresh Python to import duckdb and open a connection (best of 3)."""
    cmd = [sys.executable, "-c", "import duckdb; duckdb.connect(':memory:').execute('select 1')"]
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def parse_queries(spec):
    qs = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            qs.extend(range(int(lo), int(hi) + 1))
        else:
            qs.append(int(part))
    for q in qs:
        if not 1 <= q <= 22:
            raise SystemExit(f"no TPC-H query {q}")
    return sorted(set(qs))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sluice_flags():
    """Extra flags for the sluice under test (env SLUICE_FLAGS, e.g. `--join-order as_written`)."""
    return os.environ.get("SLUICE_FLAGS", "").split()


def before_flags():
    """Extra flags for the BEFORE binary (env BEFORE_FLAGS, e.g. `--set sluice.decimal_arith=false`
    with BEFORE the binary under test: one binary with and without a rewrite)."""
    return os.environ.get("BEFORE_FLAGS", "").split()


def fmt(x):
    return f"{x:.3f}"


def bench(sluice, data, rounds):
    threads = int(os.environ.get("THREADS", "2"))
    queries = parse_queries(os.environ.get("QUERIES", "1-22"))
    data = os.path.abspath(data)
    sluice_version = subprocess.run([sluice, "--version"], check=True, stdout=subprocess.PIPE,
                                    text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="sluice-tpch-vs-duckdb-")
    try:
        return bench_in(sluice, data, rounds, threads, queries, sluice_version, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_in(sluice, data, rounds, threads, queries, sluice_version, tmp):
    import duckdb

    # Answers, once per query, untimed.
    mismatches = {}
    con = duckdb_connect(data, threads)
    for n in queries:
        print(f"checking q{n}", file=sys.stderr, flush=True)
        try:
            sl = sluice_answer(sluice, data, n, threads, tmp)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            mismatches[n] = [f"sluice sql failed: {e}"]
            continue
        try:
            _, dk = duckdb_run(con, n)
        except Exception as e:  # noqa: BLE001
            mismatches[n] = [f"DuckDB failed: {e}"]
            continue
        problems = compare(sl, dk)
        if problems:
            mismatches[n] = problems
    con.close()

    # Timing: per round, per query, one fresh process of each engine; who goes first alternates.
    # With BEFORE (another sluice binary, e.g. the last release), it runs too, as it is.
    before = os.environ.get("BEFORE")
    engines = ["sluice", "duckdb"] + (["before"] if before else [])
    results = {n: {e: [] for e in engines} for n in queries}
    failed = {}
    for r in range(rounds):
        for n in queries:
            order = engines if r % 2 == 0 else engines[::-1]
            for engine in order:
                print(f"round {r + 1}/{rounds} q{n} {engine}", file=sys.stderr, flush=True)
                try:
                    if engine == "sluice":
                        results[n][engine].append(
                            run_sluice(sluice, data, n, threads, tmp, sluice_flags()))
                    elif engine == "before":
                        results[n][engine].append(
                            run_sluice(before, data, n, threads, tmp, before_flags()))
                    else:
                        results[n][engine].append(run_duckdb(data, n, threads))
                except subprocess.CalledProcessError as e:
                    # A failed run (e.g. `sluice bench` finding a wrong answer) is reported.
                    failed.setdefault(n, []).append(f"{engine} round {r + 1}: {e}")
    startup = duckdb_startup()

    for n, errors in failed.items():
        mismatches.setdefault(n, []).extend(errors)
    rows = []
    for n in queries:
        s, d = results[n]["sluice"], results[n]["duckdb"]
        if not s or not d:
            continue  # every run of one engine failed: listed under the answers
        digests = sorted({x["digest"] for x in s})
        row = {
            "query": n,
            "sluice_query_s": min(x["query_s"] for x in s),
            "sluice_process_s": min(x["process_s"] for x in s),
            "duckdb_query_s": min(x["query_s"] for x in d),
            "duckdb_process_s": min(x["process_s"] for x in d),
            "sluice_rows": s[0]["rows"],
            "duckdb_rows": d[0]["rows"],
            "sluice_digests": digests,
            "answer": "equal" if n not in mismatches else "differs",
        }
        if before and results[n]["before"]:
            row["before_query_s"] = min(x["query_s"] for x in results[n]["before"])
        row["ratio_process"] = row["sluice_process_s"] / row["duckdb_process_s"]
        row["ratio_query"] = row["sluice_query_s"] / row["duckdb_query_s"]
        if len(digests) > 1:
            mismatches.setdefault(n, []).append(f"sluice digests differ between rounds: {digests}")
            row["answer"] = "differs"
        rows.append(row)
    keys = ["sluice_query_s", "sluice_process_s", "duckdb_query_s", "duckdb_process_s"]
    if before:
        keys.append("before_query_s")
    totals = {k: sum(r.get(k, math.nan) for r in rows) for k in keys}
    totals["ratio_process"] = totals["sluice_process_s"] / (totals["duckdb_process_s"] or math.nan)
    totals["ratio_query"] = totals["sluice_query_s"] / (totals["duckdb_query_s"] or math.nan)

    header = (f"machine: {os.cpu_count()} CPUs (nproc {nproc()}), {cpu_model()}; threads {threads}; "
              f"rounds {rounds} (minimum kept); {sluice_version}; DuckDB {duckdb.__version__}; "
              f"data {data}")
    lines = [
        header,
        "",
        f"DuckDB process times include a fresh Python importing duckdb: {fmt(startup)} s alone "
        "(best of 3), so the query-time ratio is the fairer one. Ratio = sluice / DuckDB "
        "(> 1: sluice slower).",
        "",
        ("| q | before query s " if before else "| q ")
        + "| sluice query s | sluice process s | DuckDB query s | DuckDB process s "
        "| ratio (query) | ratio (process) |",
        "|---|---|---|---|---|---|---|" + ("---|" if before else ""),
    ]
    if before:
        lines.insert(2, f"before: {before} {' '.join(before_flags())}; "
                        f"sluice flags: {' '.join(sluice_flags()) or '(none)'}")
    for r in rows:
        mark = "" if r["answer"] == "equal" else " **answer differs**"
        was = f" {fmt(r.get('before_query_s', math.nan))} |" if before else ""
        lines.append(f"| q{r['query']} |{was} {fmt(r['sluice_query_s'])} | {fmt(r['sluice_process_s'])} "
                     f"| {fmt(r['duckdb_query_s'])} | {fmt(r['duckdb_process_s'])} "
                     f"| {r['ratio_query']:.2f} | {r['ratio_process']:.2f}{mark} |")
    was = f" {fmt(totals['before_query_s'])} |" if before else ""
    lines.append(f"| total |{was} {fmt(totals['sluice_query_s'])} | {fmt(totals['sluice_process_s'])} "
                 f"| {fmt(totals['duckdb_query_s'])} | {fmt(totals['duckdb_process_s'])} "
                 f"| {totals['ratio_query']:.2f} | {totals['ratio_process']:.2f} |")
    lines.append("")
    if not mismatches:
        lines.append(f"answers: all {len(queries)} equal")
    else:
        lines.append(f"answers: {len(mismatches)} of {len(queries)} differ (or a run failed)")
        for n in sorted(mismatches):
            for p in mismatches[n]:
                lines.append(f"- q{n}: {p}")
    print("\n".join(lines))

    if os.environ.get("JSON_OUT"):
        report = {
            "machine": {"nproc": nproc(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model()},
            "threads": threads, "rounds": rounds, "sluice_version": sluice_version,
            "duckdb_version": duckdb.__version__, "data": data,
            "duckdb_python_startup_s": startup,
            "queries": rows, "totals": totals,
            "raw": {str(n): results[n] for n in queries},
            "mismatches": {f"q{n}": p for n, p in sorted(mismatches.items())},
        }
        with open(os.environ["JSON_OUT"], "w") as f:
            json.dump(report, f, indent=2)
    return 1 if mismatches else 0


def nproc():
    try:
        return int(subprocess.run(["nproc"], stdout=subprocess.PIPE, text=True).stdout)
    except (OSError, ValueError):
        return os.cpu_count()


def main(argv):
    if len(argv) >= 2 and argv[1] == "duckdb-one" and len(argv) == 5:
        duckdb_one(argv[2], argv[3], argv[4])
        return 0
    if len(argv) == 5 and argv[1] == "bench":
        return bench(argv[2], argv[3], int(argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
