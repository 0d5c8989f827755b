"""Memory matrix: queries with large per-group state, windows, sorts and joins, each run under a
memory limit by sluice (`sluice sql --memory-limit`) and by DuckDB (`memory_limit`), 2 threads,
whole processes: finished or failed, seconds, peak RSS, and the answers side by side.

usage: python3 memory_matrix.py SLUICE DATA LIMIT_MIB [NAME ...]   (see memory_matrix.sh)
"""
import os
import re
import subprocess
import sys
import time

QUERIES = [
    ("array_agg", """SELECT l_suppkey, count(*) AS n, sum(array_length(a)) AS s FROM (SELECT l_suppkey, array_agg(l_partkey) AS a FROM lineitem GROUP BY l_suppkey) t GROUP BY 1 ORDER BY 1 LIMIT 5"""),
    ("array_agg_many", """SELECT count(*), sum(array_length(a)) FROM (SELECT l_orderkey, array_agg(l_comment) AS a FROM lineitem GROUP BY l_orderkey) t"""),
    ("string_agg", """SELECT count(*), sum(length(s)) FROM (SELECT l_suppkey, string_agg(l_comment, ',') AS s FROM lineitem GROUP BY l_suppkey) t"""),
    ("median", """SELECT count(*), sum(m) FROM (SELECT l_suppkey, median(l_extendedprice) AS m FROM lineitem GROUP BY l_suppkey) t"""),
    ("median_join", """SELECT o_orderpriority, median(l_extendedprice) FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1 ORDER BY 1"""),
    ("median_global", """SELECT median(l_extendedprice), median(l_orderkey) FROM lineitem"""),
    ("median_float_key", """SELECT count(*), sum(m) FROM (SELECT d, median(l_extendedprice) AS m FROM (SELECT CAST(l_discount AS DOUBLE) AS d, l_extendedprice FROM lineitem) GROUP BY d) t"""),
    ("two_distinct", """SELECT l_returnflag, count(DISTINCT l_partkey), count(DISTINCT l_orderkey) FROM lineitem GROUP BY 1 ORDER BY 1"""),
    ("distinct_hi", """SELECT count(*), sum(c) FROM (SELECT l_suppkey, count(DISTINCT l_orderkey) AS c FROM lineitem GROUP BY l_suppkey) t"""),
    ("window_running", """SELECT count(*), sum(r) FROM (SELECT sum(l_quantity) OVER (PARTITION BY l_suppkey ORDER BY l_orderkey, l_linenumber ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS r FROM lineitem) t"""),
    ("window_rank_big", """SELECT count(*), sum(r) FROM (SELECT rank() OVER (PARTITION BY l_returnflag ORDER BY l_extendedprice) AS r FROM lineitem) t"""),
    ("window_whole_partition", """SELECT count(*), sum(r) FROM (SELECT l_quantity - avg(l_quantity) OVER (PARTITION BY l_returnflag) AS r FROM lineitem) t"""),
    ("window_whole_join", """SELECT count(*), sum(r) FROM (SELECT l_quantity - avg(l_quantity) OVER (PARTITION BY o_orderpriority) AS r FROM orders JOIN lineitem ON o_orderkey = l_orderkey) t"""),
    ("window_whole_float_key", """SELECT count(*), sum(r) FROM (SELECT l_quantity - avg(l_quantity) OVER (PARTITION BY CAST(l_discount AS DOUBLE)) AS r FROM lineitem) t"""),
    ("window_lag", """SELECT count(*), sum(d) FROM (SELECT l_extendedprice - lag(l_extendedprice) OVER (PARTITION BY l_partkey ORDER BY l_orderkey, l_linenumber) AS d FROM lineitem) t"""),
    ("sort_wide", """SELECT l_orderkey, l_linenumber, l_comment FROM lineitem ORDER BY l_comment, l_orderkey, l_linenumber LIMIT 3 OFFSET 3000000"""),
    ("sort_all_out", """SELECT count(*), sum(x) FROM (SELECT l_orderkey * 1 AS x, row_number() OVER (ORDER BY l_comment, l_orderkey, l_linenumber) AS rn FROM lineitem) t"""),
    ("groupby_hi", """SELECT count(*), sum(s) FROM (SELECT l_orderkey, l_partkey, sum(l_quantity) AS s FROM lineitem GROUP BY 1, 2) t"""),
    ("join_agg_distinct", """SELECT o_orderpriority, count(*), sum(l_extendedprice), count(DISTINCT o_custkey) FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1 ORDER BY 1"""),
    ("join_two_distinct", """SELECT o_orderpriority, count(DISTINCT o_custkey), count(DISTINCT l_partkey), sum(l_quantity) FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1 ORDER BY 1"""),
    ("join_big", """SELECT count(*), sum(l_quantity * o_totalprice) FROM lineitem JOIN orders ON l_orderkey = o_orderkey JOIN partsupp ON l_partkey = ps_partkey AND l_suppkey = ps_suppkey"""),
    # NOT IN whose subquery may hold NULL (DataFusion's null-aware join builds all of lineitem's
    # keys in one table), one that does hold a NULL (no row kept), and one shown NULL-free.
    ("not_in_nullable", """SELECT count(*), sum(l_quantity) FROM lineitem WHERE l_orderkey NOT IN (SELECT nullif(o_orderkey, -1) FROM orders WHERE o_orderdate < DATE '1995-01-01')"""),
    ("not_in_holds_null", """SELECT count(*), sum(l_quantity) FROM lineitem WHERE l_orderkey NOT IN (SELECT CASE WHEN o_orderkey % 1000 = 1 THEN NULL ELSE o_orderkey END FROM orders WHERE o_orderdate < DATE '1995-01-01')"""),
    ("not_in_no_null", """SELECT count(*), sum(l_quantity) FROM lineitem WHERE l_orderkey > 0 AND l_orderkey NOT IN (SELECT o_orderkey FROM orders WHERE o_orderdate < DATE '1995-01-01' AND o_orderkey > 0)"""),
]
TABLES = ["lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region"]


def timed(cmd):
    """Runs `cmd` under /usr/bin/time: exit status, seconds, peak RSS in MB, stdout, stderr."""
    start = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "RSS=%M"] + cmd, capture_output=True, text=True, timeout=1800)
    rss = int(re.findall(r"RSS=(\d+)", p.stderr)[-1]) // 1024
    return p.returncode, time.time() - start, rss, p.stdout, p.stderr


def main():
    sluice, data, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    only = set(sys.argv[4:])
    python = sys.executable
    spill = os.environ.get("SPILL_DIR", "/tmp/memory-matrix-spill")
    os.makedirs(spill, exist_ok=True)
    print(f"| query | sluice | sluice s | sluice RSS MB | DuckDB | DuckDB s | DuckDB RSS MB |")
    print("|---|---|---|---|---|---|---|")
    answers = []
    for name, sql in QUERIES:
        if only and name not in only:
            continue
        views = "".join(
            f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/{t}/*.parquet');" for t in TABLES
        )
        script = (
            "import duckdb\n"
            f"c = duckdb.connect(config={{'memory_limit': '{mib}MB', 'threads': 2, "
            f"'temp_directory': '{spill}'}})\n"
            "c.execute('SET enable_progress_bar = false')\n"
            f"c.execute({views!r})\n"
            f"print(c.execute({sql!r}).fetchall())\n"
        )
        rc, secs, rss, out, err = timed([python, "-c", script])
        duck = ("ok", out.strip()) if rc == 0 else ("FAILED", " ".join(l for l in err.splitlines() if "Error" in l or "error" in l)[:300])
        args = [sluice, "sql", "-q", "--threads", "2", "--memory-limit", f"{mib}MiB"]
        for t in TABLES:
            args += ["--table", f"{t}={data}/{t}"]
        rc2, secs2, rss2, out2, err2 = timed(args + ["-e", sql])
        ours = ("ok", " ".join(out2.split())) if rc2 == 0 else ("FAILED", (err2.strip().splitlines() or ["?"])[0][:160])
        print(f"| {name} | {ours[0]} | {secs2:.1f} | {rss2} | {duck[0]} | {secs:.1f} | {rss} |", flush=True)
        answers.append((name, ours[1], duck[1]))
    print()
    for name, ours, duck in answers:
        print(f"- {name}\n  - sluice: {ours[:300]}\n  - DuckDB: {duck[:300]}")


if __name__ == "__main__":
    main()
