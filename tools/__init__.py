"""Developer tooling: the local stack (make up/down), the demo, shared launchers."""
