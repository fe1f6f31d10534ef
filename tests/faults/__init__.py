"""Fault tests: real consumers under kill -9, Redis restarts and SMTP outages."""
