"""A worker for SluiceWorkflow and the sluice_run activity:
`python -m sluice_temporal.worker [--address localhost:7233] [--namespace default] [--task-queue sluice]`."""

from __future__ import annotations

import argparse
import asyncio

from temporalio.client import Client
from temporalio.worker import Worker

from sluice_temporal.activities import sluice_run
from sluice_temporal.workflows import SluiceWorkflow

TASK_QUEUE = "sluice"


def worker(client: Client, task_queue: str = TASK_QUEUE, **options) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=[SluiceWorkflow], activities=[sluice_run], **options)


async def main(address: str, namespace: str, task_queue: str) -> None:
    client = await Client.connect(address, namespace=namespace)
    await worker(client, task_queue).run()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", default="localhost:7233")
    p.add_argument("--namespace", default="default")
    p.add_argument("--task-queue", default=TASK_QUEUE)
    a = p.parse_args()
    asyncio.run(main(a.address, a.namespace, a.task_queue))
