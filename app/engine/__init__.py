"""Running prompts: recording (group commit), dispatching, executing with retries and
fallbacks, sweeping, events, the Celery app, and the runtime a process opens."""
