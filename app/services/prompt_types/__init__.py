"""Prompt types as managed, versioned policies: `/ai/prompt-types` and how a prompt uses one."""
