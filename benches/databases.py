"""Helper of benches/databases.sh: the ConnectorX and DuckDB sides of the import benchmark,
and the checks that every output holds the same rows. Run with the benchmark's venv
(connectorx, pyarrow, duckdb==1.5.5, duckdb-extension-postgres==1.5.5).

  python databases.py free-port
  python databases.py csv PARQUET_DIR OUT.csv           lineitem as one headerless CSV file
  python databases.py connectorx URL OUT.parquet PARTS  read_sql(partition_on=l_orderkey) + pyarrow
  python databases.py duckdb URL OUT.parquet THREADS    DuckDB's postgres extension, COPY TO parquet
  python databases.py check PARQUET_FILE_OR_DIR         prints: rows|sum(l_quantity)|sum(l_extendedprice)
"""

import os
import socket
import sys
import tempfile


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def parquet_glob(path):
    return os.path.join(path, "*.parquet") if os.path.isdir(path) else path


def to_csv(parquet_dir, out):
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{parquet_glob(parquet_dir)}') ORDER BY l_orderkey, l_linenumber) "
        f"TO '{out}' (FORMAT csv, HEADER false)"
    )


def connectorx(url, out, parts):
    import connectorx as cx
    import pyarrow.parquet as pq

    table = cx.read_sql(
        url,
        "SELECT * FROM lineitem",
        partition_on="l_orderkey",
        partition_num=int(parts),
        return_type="arrow",
    )
    pq.write_table(table, out, compression="zstd")


def duckdb_extension():
    """The postgres extension shipped in the duckdb-extension-postgres wheel, under the file name
    DuckDB derives its entry point from (postgres_scanner: the wheel calls it postgres)."""
    import duckdb_extension_postgres

    import duckdb

    folder = os.path.join(
        os.path.dirname(duckdb_extension_postgres.__file__), "extensions", "v" + duckdb.__version__
    )
    shipped = os.path.join(folder, "postgres.duckdb_extension")
    if not os.path.exists(shipped):
        sys.exit(f"no {shipped}: duckdb {duckdb.__version__} and duckdb-extension-postgres differ")
    link = os.path.join(tempfile.mkdtemp(prefix="duckdb-ext-"), "postgres_scanner.duckdb_extension")
    os.symlink(shipped, link)
    return link


def duckdb_copy(url, out, threads):
    import duckdb

    con = duckdb.connect()
    # Nothing is downloaded: the extension is the wheel's (signed, so no unsigned loading).
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"LOAD '{duckdb_extension()}'")
    con.execute(f"SET threads = {int(threads)}")
    # At most as many connections as threads, as sluice and ConnectorX get.
    con.execute(f"SET pg_connection_limit = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"ATTACH '{url}' AS pg (TYPE postgres, READ_ONLY)")
    con.execute(
        f"COPY (SELECT * FROM pg.public.lineitem) TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
    )


def check(path):
    import duckdb

    row = duckdb.sql(
        f"SELECT count(*), sum(l_quantity)::DECIMAL(38,2), sum(l_extendedprice)::DECIMAL(38,2) "
        f"FROM read_parquet('{parquet_glob(path)}')"
    ).fetchone()
    print("|".join(str(v) for v in row))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "free-port": free_port,
        "csv": to_csv,
        "connectorx": connectorx,
        "duckdb": duckdb_copy,
        "check": check,
    }[cmd](*args)


if __name__ == "__main__":
    main()
