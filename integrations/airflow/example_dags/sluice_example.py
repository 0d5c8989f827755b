"""Run a sluice pipeline once a day with SluiceOperator.

The pipeline folder and the sluice executable come from the environment here
(SLUICE_EXAMPLE_PIPELINE, SLUICE_BIN); in a real deployment write them in, or use an Airflow
Variable: pipeline="{{ var.value.sales_pipeline }}".
"""

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from sluice_airflow.operators import SluiceOperator

with DAG(
    dag_id="sluice_example",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["sluice"],
):
    SluiceOperator(
        task_id="orders_daily",
        pipeline=os.environ.get("SLUICE_EXAMPLE_PIPELINE", "/srv/pipelines/orders"),
        sluice_bin=os.environ.get("SLUICE_BIN", "sluice"),
        vars={"min_amount": 25},
        # --as-of and --var data_interval_start/_end come from the run's data interval.
        # To keep the run out of production's busy hours (exit 75 -> up_for_reschedule until
        # the window opens): window="01:00-05:00", timezone="Europe/Berlin",
    )
