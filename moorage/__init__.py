"""Moorage: zero-downtime deployments of Compose projects on Docker, as Temporal workflows."""

__version__ = "0.1.0"
