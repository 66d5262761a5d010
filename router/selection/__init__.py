"""Choosing a model and a node for a job: profiles, policies, needs, the pick (pure)."""
