"""`python -m app worker`: the Celery worker process (main.py) and its own health server."""
