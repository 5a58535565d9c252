"""POST /v1/embeddings: OpenAI's Embeddings API on the prompt records."""
