"""Prompt Manager: a gateway that records every prompt sent to an AI model provider."""

__version__ = "0.1.0"
