"""OpenAI's chat completions and model list on top of the prompt records."""
