"""Run sluice pipelines from Temporal: the `sluice_run` activity (activities.py), the
`SluiceWorkflow` workflow (workflows.py) and a worker (worker.py)."""
