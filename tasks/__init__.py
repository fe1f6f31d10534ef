"""Task modules. Importing this package registers every task with the queue."""

from tasks import emails, zoho, zoho_webhooks  # noqa: F401
