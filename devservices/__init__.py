"""Local development services for tests, the demo and benchmarks. Never deployed."""
