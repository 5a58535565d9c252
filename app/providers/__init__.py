"""The provider boundary: one adapter per vendor behind one protocol, the catalogue, routing,
retries and the circuit breaker."""
