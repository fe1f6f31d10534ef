"""WSGI entry point: `gunicorn dashboard.wsgi:app`.

Settings come from the TSHJOBS_* environment and the env file. An invalid
setting stops the start with a ConfigError that lists every problem.
"""

from dashboard import create_app
from tshjobs.logconfig import configure_logging
from tshjobs.settings import get_settings

settings = get_settings()
configure_logging(settings.log_level)
app = create_app(settings)
