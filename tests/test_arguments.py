"""Task arguments are checked when enqueued, so bad input fails in the ERP."""

from __future__ import annotations

import pytest

from tasks import emails
from tshjobs.arguments import InvalidArguments
from tshjobs.queue import get_huey
from tshjobs.settings import load_settings


@pytest.fixture
def queue(settings_env):
    huey = get_huey(load_settings())
    yield huey
    huey.flush()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("03",), {}, "customer_id must be int, got str '03'"),
        ((" 3",), {}, "customer_id must be int, got str"),
        ((3.0,), {}, "customer_id must be int, got float"),
        ((True,), {}, "customer_id must be int, got bool"),
        ((None,), {}, "customer_id must be int, got NoneType"),
        ((0,), {}, "customer_id must be from 1 to 9223372036854775807, got 0"),
        ((-4,), {}, "customer_id must be from 1 to 9223372036854775807, got -4"),
        ((), {}, "missing a required argument: 'customer_id'"),
        ((3, False, 1), {}, "too many positional arguments"),
        ((3,), {"forced": True}, "unexpected keyword argument 'forced'"),
        ((3,), {"force": "no"}, "force must be bool, got str 'no'"),
        ((3,), {"force": 0}, "force must be bool, got int 0"),
    ],
)
def test_welcome_email_rejects(queue, args, kwargs, message):
    with pytest.raises(InvalidArguments) as caught:
        emails.send_welcome_email(*args, **kwargs)

    assert message in str(caught.value)
    assert str(caught.value).startswith("send_welcome_email(): ")
    assert queue.pending_count() == 0


def test_invalid_arguments_is_type_error(queue):
    with pytest.raises(TypeError):
        emails.send_invoice_email("INV-1")


def test_valid_calls_enqueue(queue):
    emails.send_welcome_email(3)
    emails.send_welcome_email(3, force=True)
    emails.send_invoice_reminder_email(5, "2026-01-31")
    emails.send_invoice_reminder_email(5, as_of=None)

    assert queue.pending_count() == 4


def test_reminder_date_must_be_text(queue):
    with pytest.raises(InvalidArguments, match="as_of must be str or None"):
        emails.send_invoice_reminder_email(5, 20260131)


@pytest.mark.parametrize(
    "value", [2**63, 10**22, 10**5000], ids=["2^63", "1e22", "1e5000"]
)
def test_id_beyond_64_bits_rejected(value):
    from tshjobs.arguments import InvalidArguments, argument_check

    def task(customer_id: int) -> None: ...

    with pytest.raises(InvalidArguments, match="must be from 1 to") as caught:
        argument_check(task)((value,), {})

    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("value", ["not-a-date", "2026-02-30", "05/01/2026"])
def test_reminder_date_checked_at_enqueue(value):
    from tasks.emails import send_invoice_reminder_email

    with pytest.raises(InvalidArguments, match="as_of must be a date as yyyy-mm-dd"):
        send_invoice_reminder_email.task_class.check_arguments((1, value), {})
