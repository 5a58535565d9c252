"""Signed webhooks for prompt outcomes: endpoints a user registers, deliveries the pump sends."""
