"""Prompts: submit and cancel (`PromptService`), list and read, follow them live."""
