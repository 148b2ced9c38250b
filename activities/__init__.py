"""Activities: every side effect of Moorage (Docker engine, health probes, traffic router)."""
