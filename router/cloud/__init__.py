"""Cloud providers: their config, chains of (provider, key, model), cooldowns, usage."""
