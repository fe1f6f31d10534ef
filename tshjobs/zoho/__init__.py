"""Zoho Books API client: OAuth tokens, the shared rate limiter and the calls."""
