"""Checks on a task's arguments, made when the ERP enqueues it.

A task with arguments it cannot run with should fail in the ERP's call, with
a message naming the argument, not minutes later in a consumer. Arguments
must also be JSON values, because the audit log stores them as JSON so that
a failed task can be enqueued again.
"""

from __future__ import annotations

import datetime
import inspect
import json
import types
import typing
from collections.abc import Callable

from tshjobs.errors import TshjobsError


class InvalidArguments(TshjobsError, TypeError):
    """Raised when a task is enqueued with arguments it cannot run with."""


def check_json(task_name: str, args, kwargs) -> None:
    try:
        json.dumps([args, kwargs], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArguments(
            f"arguments of task {task_name} must be JSON values (numbers, "
            f"strings, lists, objects): {exc}"
        ) from None


def _allowed_types(annotation) -> tuple[type, ...] | None:
    """Return the types a parameter annotation accepts, or None for any."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, type):
        return (annotation,)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is (
        typing.Union
    ):
        parts = [_allowed_types(part) for part in typing.get_args(annotation)]
        if any(part is None for part in parts):
            return None
        return tuple(kind for part in parts for kind in part)
    return None


def _matches(value, allowed: tuple[type, ...]) -> bool:
    # bool is a subclass of int, but True is not an order id.
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, tuple(kind for kind in allowed if kind is not bool))


def _type_names(allowed: tuple[type, ...]) -> str:
    return " or ".join(
        "None" if kind is type(None) else kind.__name__ for kind in allowed
    )


# The largest id a 64-bit integer column (PostgreSQL bigint, SQLite
# INTEGER) holds.
MAX_ID = 2**63 - 1


# Parameters that take an ISO date (yyyy-mm-dd) as a string.
DATE_PARAMETERS = frozenset({"as_of", "day", "date"})


def _check_date(name: str, parameter: str, value: str) -> None:
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise InvalidArguments(
            f"{name}(): {parameter} must be a date as yyyy-mm-dd, got {value!r:.40}"
        ) from None


def _short_repr(value: int) -> str:
    """Return the number, or its first digits and length when it is long."""
    text = str(value) if value.bit_length() < 4000 else "a number"
    return text if len(text) <= 30 else f"{text[:20]}... ({len(text)} digits)"


def argument_check(fn: Callable) -> Callable[[tuple, dict], None]:
    """Build a check of `fn`'s call arguments from its signature.

    It raises InvalidArguments when the arguments do not bind to the
    signature, when a value does not match a plain type annotation (int, str,
    bool, float, their unions with None), or when a parameter named `*_id`
    gets a whole number outside 1 to MAX_ID, the range of the databases'
    64-bit integer ids, or a date parameter (DATE_PARAMETERS) gets a string
    that is not an ISO date.
    """
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    allowed = {
        name: _allowed_types(hints.get(name, inspect.Parameter.empty))
        for name in signature.parameters
    }

    def check(args: tuple, kwargs: dict) -> None:
        name = fn.__name__
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{name}(): {exc}") from None

        for parameter, value in bound.arguments.items():
            kinds = allowed.get(parameter)
            if kinds is not None and not _matches(value, kinds):
                raise InvalidArguments(
                    f"{name}(): {parameter} must be {_type_names(kinds)}, "
                    f"got {type(value).__name__} {value!r:.80}"
                )
            if parameter in DATE_PARAMETERS and isinstance(value, str):
                _check_date(name, parameter, value)
            is_id = parameter.endswith("_id") and isinstance(value, int)
            if is_id and not 1 <= value <= MAX_ID:
                raise InvalidArguments(
                    f"{name}(): {parameter} must be from 1 to {MAX_ID}, got "
                    f"{_short_repr(value)}"
                )

    return check
