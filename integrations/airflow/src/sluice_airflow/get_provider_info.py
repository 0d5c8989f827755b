"""What Airflow's provider manager lists for this package (the `apache_airflow_provider`
entry point)."""


def get_provider_info():
    return {
        "package-name": "sluice-airflow",
        "name": "sluice",
        "description": "Run sluice pipelines: SluiceOperator.",
        "versions": ["0.1.0"],
    }
