"""Domain services: what the API does, without HTTP. The intake turns any request into a
prompt; `Services` (container.py) holds what a process serves requests with."""
