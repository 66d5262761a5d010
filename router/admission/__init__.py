"""Who is asking and when they go: tenants and the idempotency gate."""
