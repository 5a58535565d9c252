"""Rate limits and budgets (#17): how a request is admitted against them (`governor.py`, over
the ledger of app/engine/ledger.py), and their administration and standing (`service.py`).
Which limits a caller has is resolved with its key (app/services/auth/accounts.py)."""
