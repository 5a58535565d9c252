"""Storage: the engine and sessions (the transaction rule), column types, the ORM models."""
