"""Task modules. Importing this package registers every task with the queue."""

from tasks import emails  # noqa: F401
