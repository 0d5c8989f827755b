"""The real pipelines the orchestrator test drivers (integrations/*/tests/run_test.py) run,
and what their outputs must hold, computed here from the generated rows, not by sluice.

`make_pipelines(root)` writes, under `root`:
  good/    orders CSV (400 rows, seeded) -> model `daily` (batched by day: 12 work units)
           -> out/daily/ Parquet: per day the orders with amount >= {{ min_amount }}, their
           revenue, and the `{{ data_interval_end }}` variable as a column;
  broken/  the same, but the SQL reads a table that does not exist (sluice exits 2);
  flaky/   the same, but a CSV value is not a number (the run fails: exit 1, retryable);
  late/    a copy of good/, for a run started outside its --window.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

DAYS = 12
ROWS = 400
MIN_AMOUNT = 25

TOML = """\
name = "orders_daily"

[vars]
min_amount = 0
data_interval_end = "unset"

[sources.orders]
location = "data/"
format = "csv"
schema = "id BIGINT, customer VARCHAR, amount DOUBLE, ts TIMESTAMP"
event_time = "ts"

[models.daily.batches]
size = "day"

[models.daily.sink]
location = "out/daily/"
"""

SQL = """\
SELECT CAST(ts AS DATE) AS day,
       COUNT(*) AS orders,
       SUM(amount) AS revenue,
       '{{ data_interval_end }}' AS interval_end
FROM %s
WHERE amount >= {{ min_amount }}
GROUP BY CAST(ts AS DATE)
"""


def rows(seed: int = 15):
    rng = random.Random(seed)
    start = datetime(2024, 1, 1)
    for i in range(ROWS):
        ts = start + timedelta(seconds=rng.randrange(DAYS * 86400))
        yield i, f"c{rng.randrange(40)}", round(rng.uniform(1, 100), 2), ts


def expected(min_amount: float = MIN_AMOUNT) -> dict[str, int]:
    """Orders with amount >= min_amount per day (ISO date), from the generated rows."""
    return dict(sorted(Counter(ts.date().isoformat() for _, _, a, ts in rows() if a >= min_amount).items()))


def _write(folder: Path, table: str, bad_value: bool = False) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "queries").mkdir()
    (folder / "sluice.toml").write_text(TOML)
    (folder / "queries" / "daily.sql").write_text(SQL % table)
    all_rows = list(rows())
    for part in range(3):  # three files, each with rows of every day
        lines = ["id,customer,amount,ts"]
        for i, c, a, ts in all_rows[part::3]:
            lines.append(f"{i},{c},{'x' if bad_value and i == 7 else a},{ts.isoformat(sep=' ')}")
        (folder / "data" / f"orders-{part}.csv").write_text("\n".join(lines) + "\n")
    return folder


def make_pipelines(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "good": _write(root / "good", "orders"),
        "broken": _write(root / "broken", "no_such_table"),
        "flaky": _write(root / "flaky", "orders", bad_value=True),
        "late": _write(root / "late", "orders"),
    }


def read_output(pipeline: Path) -> dict[str, dict]:
    """The published output of `daily`, by day, read with pyarrow from its _MANIFEST's files."""
    import pyarrow.parquet as pq

    out = pipeline / "out" / "daily"
    files = sorted(out.rglob("*.parquet"))
    table = pq.ParquetDataset([str(f) for f in files]).read() if files else None
    result = {}
    for row in (table.to_pylist() if table is not None else []):
        result[row["day"].isoformat()] = {k: v for k, v in row.items() if k != "day"}
    return result


def counting_sluice(sluice: str, folder: Path) -> tuple[str, Path]:
    """A wrapper of `sluice` that appends each call's start time (UTC) and arguments to a log,
    so a driver counts the orchestrator's attempts itself: (the wrapper, its log)."""
    log = folder / "sluice-calls.log"
    wrapper = folder / "sluice"
    wrapper.write_text(f'#!/bin/sh\necho "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ) $*" >> "{log}"\nexec "{sluice}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def calls(log: Path, pipeline: Path) -> list[datetime]:
    """When the wrapper ran `sluice run PIPELINE`, in order."""
    times = []
    for line in log.read_text().splitlines() if log.exists() else []:
        when, *args = line.split(" ")
        if args[:2] == ["run", str(pipeline)]:
            times.append(datetime.fromisoformat(when[:26].rstrip("Z") + "+00:00"))
    return times


def window_opening_in(seconds: float, now: datetime | None = None) -> tuple[str, datetime]:
    """A daily window (UTC, 10 minutes long) closed now that opens at the first whole minute
    at least `seconds` from now: (its --window text, when it opens)."""
    now = now or datetime.now(timezone.utc)
    start = (now + timedelta(seconds=seconds + 59.999)).replace(second=0, microsecond=0)
    return f"{start:%H:%M}-{start + timedelta(minutes=10):%H:%M}", start


class Checks:
    """Collects named checks; `finish()` prints them as JSON and exits 1 if one failed."""

    def __init__(self):
        self.results: dict[str, dict] = {}
        self.info: dict = {}

    def check(self, name: str, ok: bool, detail=None):
        self.results[name] = {"ok": bool(ok), "detail": detail}
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", file=sys.stderr)

    def equal(self, name: str, got, want):
        self.check(name, got == want, {"got": got, "want": want})

    def finish(self):
        ok = bool(self.results) and all(r["ok"] for r in self.results.values())
        print(json.dumps({"ok": ok, "checks": self.results, "info": self.info}, default=str))
        sys.stdout.flush()
        sys.stderr.flush()
        # Out without the interpreter's finalization: temporalio's core threads can abort the
        # process there ("PyGILState_Release ... finalizing", seen in CI) after every check
        # has passed.
        os._exit(0 if ok else 1)
