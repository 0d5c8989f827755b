"""The test driver's DAG: a run started outside its window (exit 75), then a broken pipeline
(exit 2) and a failing one (exit 1), each with retries=2. The late run goes first so that its
first try is before the window the driver chose opens. Paths come from the driver's environment."""

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from sluice_airflow.operators import SluiceOperator

root = os.environ["SLUICE_TEST_PIPELINES"]
with DAG(
    dag_id="sluice_failures",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=1), "sluice_bin": os.environ["SLUICE_BIN"]},
):
    late = SluiceOperator(task_id="late", pipeline=f"{root}/late", vars={"min_amount": 25},
                          window=os.environ["SLUICE_TEST_WINDOW"], timezone="UTC")
    late >> SluiceOperator(task_id="broken", pipeline=f"{root}/broken", trigger_rule="all_done")
    late >> SluiceOperator(task_id="flaky", pipeline=f"{root}/flaky", trigger_rule="all_done")
