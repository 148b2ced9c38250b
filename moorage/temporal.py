"""The Temporal client, configured from settings (address, namespace, TLS)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from moorage.settings import Settings


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS (or mTLS with a client certificate) for a Temporal cluster; False for the dev server."""
    if not settings.temporal_tls:
        return False
    return TLSConfig(
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes()
        if settings.temporal_tls_ca
        else None,
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes()
        if settings.temporal_tls_key
        else None,
    )


async def connect(settings: Settings) -> Client:
    """Connect to Temporal with the pydantic data converter every Moorage process uses.

    Raises:
        RuntimeError: Temporal does not answer at the configured address.
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls_config(settings),
        data_converter=pydantic_data_converter,
    )
