"""The HTTP API: FastAPI routes over the DeploymentService."""
