"""Temporal workflows: the project entity workflow and one workflow per deployment strategy."""
