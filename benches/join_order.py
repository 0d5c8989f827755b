"""Join order on star, snowflake and fact-to-fact queries over TPC-H tables; run by join_order.sh.

    python join_order.py SLUICE_BIN DATA_DIR ROUNDS      (env THREADS, default 2)

Each query is written twice: `written` as a user might (the fact tables first, the selective
dimensions last) and `best`, ordered by hand (the most selective dimension joined to its fact
first). Per query and round, fresh processes, in turn: sluice on `written` with
`--join-order as_written`, sluice on `written` with `--join-order cost`, sluice on `best` with
`as_written` (the reference order) and DuckDB 1.5.5 on `written`. Wall clock around each
process, minimum over rounds. Every sluice answer is checked against DuckDB's (row count and
per-column sums / sorted values, as tpch_vs_duckdb.py does) before timing. Prints a Markdown
table with `cost / best`: the chosen order's time against the hand-ordered one's.
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpch_vs_duckdb import TABLES, compare  # noqa: E402

QUERIES = [
    (
        # A star: lineitem with three dimensions, the most selective (a string equality on
        # part: 1 type in 150) last.
        "star",
        """SELECT s_name, count(*) AS n, sum(l_extendedprice * (1 - l_discount)) AS revenue
FROM lineitem, orders, supplier, part
WHERE l_orderkey = o_orderkey AND l_suppkey = s_suppkey AND l_partkey = p_partkey
  AND o_orderdate >= DATE '1995-01-01' AND o_orderdate < DATE '1996-01-01'
  AND p_type = 'STANDARD POLISHED TIN'
GROUP BY s_name ORDER BY revenue DESC, s_name LIMIT 20""",
        """SELECT s_name, count(*) AS n, sum(l_extendedprice * (1 - l_discount)) AS revenue
FROM part, lineitem, orders, supplier
WHERE l_orderkey = o_orderkey AND l_suppkey = s_suppkey AND l_partkey = p_partkey
  AND o_orderdate >= DATE '1995-01-01' AND o_orderdate < DATE '1996-01-01'
  AND p_type = 'STANDARD POLISHED TIN'
GROUP BY s_name ORDER BY revenue DESC, s_name LIMIT 20""",
    ),
    (
        # A snowflake: suppliers through nation to a region named by string, parts by brand
        # and a container pattern.
        "snowflake",
        """SELECT n_name, count(*) AS n, sum(l_quantity) AS q
FROM lineitem, supplier, nation, region, part
WHERE l_suppkey = s_suppkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey
  AND l_partkey = p_partkey AND r_name = 'EUROPE'
  AND p_brand = 'Brand#32' AND p_container LIKE 'LG%'
GROUP BY n_name ORDER BY n_name""",
        """SELECT n_name, count(*) AS n, sum(l_quantity) AS q
FROM part, lineitem, supplier, nation, region
WHERE l_suppkey = s_suppkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey
  AND l_partkey = p_partkey AND r_name = 'EUROPE'
  AND p_brand = 'Brand#32' AND p_container LIKE 'LG%'
GROUP BY n_name ORDER BY n_name""",
    ),
    (
        # Two fact tables joined only through a shared dimension (part, filtered by a pattern
        # and a size): written facts first, they meet only where the dimension joins.
        "fact_to_fact",
        """SELECT count(*) AS n, sum(l_quantity * ps_supplycost) AS c
FROM lineitem, partsupp, part
WHERE l_partkey = p_partkey AND ps_partkey = p_partkey AND l_suppkey = ps_suppkey
  AND p_name LIKE '%lavender%' AND p_size < 10""",
        """SELECT count(*) AS n, sum(l_quantity * ps_supplycost) AS c
FROM part, partsupp, lineitem
WHERE l_partkey = p_partkey AND ps_partkey = p_partkey AND l_suppkey = ps_suppkey
  AND p_name LIKE '%lavender%' AND p_size < 10""",
    ),
    (
        # Customers by segment and phone prefix, their orders and lines.
        "customers",
        """SELECT o_orderpriority, count(*) AS n, sum(l_extendedprice) AS s
FROM lineitem, orders, customer
WHERE l_orderkey = o_orderkey AND o_custkey = c_custkey
  AND c_mktsegment = 'MACHINERY' AND c_phone LIKE '27-%'
GROUP BY o_orderpriority ORDER BY o_orderpriority""",
        """SELECT o_orderpriority, count(*) AS n, sum(l_extendedprice) AS s
FROM customer, orders, lineitem
WHERE l_orderkey = o_orderkey AND o_custkey = c_custkey
  AND c_mktsegment = 'MACHINERY' AND c_phone LIKE '27-%'
GROUP BY o_orderpriority ORDER BY o_orderpriority""",
    ),
]


def sluice_cmd(sluice, data, threads, sql, order, out=None):
    cmd = [sluice, "-q", "sql", "--threads", str(threads), "--join-order", order, "-e", sql]
    for t in TABLES:
        cmd += ["--table", f"{t}={os.path.join(data, t)}/"]
    if out:
        cmd += ["--format", "parquet", "--out", out]
    return cmd


def duckdb_script(data, threads, sql, out=None):
    views = "".join(
        f"c.execute(\"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/{t}/*.parquet')\")\n"
        for t in TABLES
    )
    tail = (
        f"import pyarrow.parquet as pq; pq.write_table(c.execute({sql!r}).to_arrow_table(), {out!r})\n"
        if out
        else f"c.execute({sql!r}).fetchall()\n"
    )
    return f"import duckdb\nc = duckdb.connect(config={{'threads': {threads}}})\n{views}{tail}"


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def read_answer(folder):
    import glob

    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))
    tables = [pq.read_table(p) for p in parts]
    return pa.concat_tables(tables) if tables else None


def main():
    sluice, data, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = int(os.environ.get("THREADS", "2"))
    python = sys.executable
    bad = False
    with tempfile.TemporaryDirectory() as tmp:
        import pyarrow.parquet as pq

        for name, written, best in QUERIES:
            duck_out = os.path.join(tmp, f"{name}-duckdb.parquet")
            subprocess.run([python, "-c", duckdb_script(data, threads, written, duck_out)], check=True)
            want = pq.read_table(duck_out)
            for label, sql, order in [("as_written", written, "as_written"), ("cost", written, "cost"), ("best", best, "as_written")]:
                out = os.path.join(tmp, f"{name}-{label}")
                subprocess.run(sluice_cmd(sluice, data, threads, sql, order, out), check=True, stdout=subprocess.DEVNULL)
                problems = compare(read_answer(out), want)
                if problems:
                    bad = True
                    print(f"{name} ({label}): answer differs from DuckDB's: {problems}", file=sys.stderr)
        print(f"| query | as written | cost | best (by hand) | DuckDB | cost / best | cost / DuckDB |")
        print("|---|---|---|---|---|---|---|")
        for name, written, best in QUERIES:
            times = {"as_written": [], "cost": [], "best": [], "duckdb": []}
            for _ in range(rounds):
                times["as_written"].append(timed(sluice_cmd(sluice, data, threads, written, "as_written")))
                times["cost"].append(timed(sluice_cmd(sluice, data, threads, written, "cost")))
                times["best"].append(timed(sluice_cmd(sluice, data, threads, best, "as_written")))
                times["duckdb"].append(timed([python, "-c", duckdb_script(data, threads, written)]))
            t = {k: min(v) for k, v in times.items()}
            print(
                f"| {name} | {t['as_written']:.3f} | {t['cost']:.3f} | {t['best']:.3f} | {t['duckdb']:.3f} "
                f"| {t['cost'] / t['best']:.2f} | {t['cost'] / t['duckdb']:.2f} |",
                flush=True,
            )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
