"""Who is asking and when they go: tenants, the idempotency gate, the line, limits."""
