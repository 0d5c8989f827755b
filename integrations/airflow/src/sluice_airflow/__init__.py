"""Run sluice pipelines from Apache Airflow (3.x): `sluice_airflow.operators.SluiceOperator`.

Nothing is imported here: Airflow loads `get_provider_info` while it reads its configuration,
before `airflow.sdk` can be imported.
"""

__version__ = "0.1.0"
