"""The plain job function that stock Huey, Celery and RQ enqueue in the benchmarks.

It takes one int, like the ERP's order ids. No worker runs it in the enqueue
benchmark, so its body does not matter.
"""


def confirm_order(order_id: int) -> int:
    return order_id
