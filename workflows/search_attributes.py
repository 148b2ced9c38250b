"""Search attributes that make deployments listable and filterable in the Temporal UI.

The dev server started by ``moorage dev`` and the test servers register exactly these.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

PROJECT_ID = SearchAttributeKey.for_keyword("ProjectId")
DEPLOYMENT_STATUS = SearchAttributeKey.for_keyword("DeploymentStatus")
STRATEGY = SearchAttributeKey.for_keyword("Strategy")
VERSION = SearchAttributeKey.for_keyword("Version")
TENANT_ID = SearchAttributeKey.for_keyword("TenantId")

ALL = (PROJECT_ID, DEPLOYMENT_STATUS, STRATEGY, VERSION, TENANT_ID)


def cli_flags() -> list[str]:
    """``--search-attribute Name=Keyword`` flags for ``temporal server start-dev``."""
    flags = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


def typed(*pairs: tuple[SearchAttributeKey[str], str]) -> TypedSearchAttributes:
    """Search attributes for starting a workflow: ``typed((PROJECT_ID, "shop"), …)``."""
    return TypedSearchAttributes([SearchAttributePair(key, value) for key, value in pairs])
