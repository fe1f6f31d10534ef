"""Enqueue the Zoho sync benchmark's tasks as the ERP does, in a process of
its own: one sync_customer call per customer, then one sync_order call per
order.

    python -m bench.zoho_enqueue tshjobs|peer IDS_JSON OUTPUT_JSON

IDS_JSON contains {"customer": [...], "order": [...]}. The tshjobs system calls
the functions of tasks.zoho, configured from the TSHJOBS_* environment
variables; the peer system enqueues the stock Huey tasks of
bench.zoho_peer_tasks. OUTPUT_JSON receives the task ids and the Unix times
of the first and the last call.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def tshjobs_enqueuer():
    from tasks.zoho import sync_customer, sync_order

    def enqueue(entity_type: str, entity_id: int) -> str:
        function = sync_customer if entity_type == "customer" else sync_order
        return function(entity_id).id

    return enqueue


def peer_enqueuer():
    from bench.zoho_peer_tasks import huey, sync_customer, sync_order

    def enqueue(entity_type: str, entity_id: int) -> str:
        function = sync_customer if entity_type == "customer" else sync_order
        # .s() builds the task without enqueueing it, so its id is known
        # even though results are off.
        task = function.s(entity_id)
        huey.enqueue(task)
        return task.id

    return enqueue


def main(argv: list[str]) -> None:
    system, ids_path, output_path = argv
    enqueuers = {"tshjobs": tshjobs_enqueuer, "peer": peer_enqueuer}
    enqueue = enqueuers[system]()
    ids = json.loads(Path(ids_path).read_text())

    started_at = time.time()
    task_ids = [enqueue("customer", i) for i in ids["customer"]]
    task_ids += [enqueue("order", i) for i in ids["order"]]
    finished_at = time.time()

    output = {"task_ids": task_ids, "started_at": started_at,
              "finished_at": finished_at}  # fmt: skip
    Path(output_path).write_text(json.dumps(output))


if __name__ == "__main__":
    main(sys.argv[1:])
