"""The tshjobs task of the benchmarks, declared like the ERP's email tasks.

Calling `confirm_order(order_id)` enqueues it on the appliance's queue, which
is configured from the TSHJOBS_* environment variables on first use.
"""

from tshjobs.queue import task


@task()
def confirm_order(order_id: int) -> int:
    return order_id
