"""Users and API keys: creating and revoking them, and who a request's key belongs to."""
