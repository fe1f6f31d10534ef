"""The Zoho Books check a consumer runs when it starts.

A configuration that can never work stops the consumer with a clear error:
required TSHJOBS_ZOHO_* settings missing, or a token server whose
`api_domain` belongs to another data centre than TSHJOBS_ZOHO_DATA_CENTRE.
Anything that may pass (Zoho unreachable, the token budget spent, a refresh
token that a person must renew) is logged, and the consumer starts: email
keeps working, and the Zoho page of the dashboard shows the problem.
"""

from __future__ import annotations

import logging

import requests
from redis.exceptions import RedisError

from tshjobs.errors import ZohoDataCentreMismatch, ZohoError, ZohoNotConfigured
from tshjobs.settings import Settings
from tshjobs.zoho.config import ZohoConfig
from tshjobs.zoho.tokens import token_manager

logger = logging.getLogger(__name__)


def check_zoho_at_start(settings: Settings) -> None:
    """Raise ZohoNotConfigured or ZohoDataCentreMismatch (both ConfigErrors)
    for a Zoho configuration that cannot work; log any other problem. This
    takes the shared access token, so it requests one only when none is
    stored."""
    if not settings.zoho_enabled:
        return

    ZohoConfig.from_settings(settings)
    session = requests.Session()
    try:
        token_manager(settings, session=session).access_token()
    except (ZohoNotConfigured, ZohoDataCentreMismatch):
        raise
    except (ZohoError, RedisError) as exc:
        logger.warning("Zoho Books is not usable yet, syncs will wait: %s", exc)
    else:
        logger.info("Zoho Books access token checked")
    finally:
        session.close()
