"""Usage reports (`GET /ai/usage`): requests, tokens, cost and durations from the daily
rollups, grouped as asked and limited to what the caller may see."""
