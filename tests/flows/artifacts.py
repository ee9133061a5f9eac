"""Read the Prefect artifacts a test looks for, by key, newest first.

The test session shares one Prefect server, so an unfiltered ``read_artifacts()`` returns only the
server's default page (the oldest artifacts of the whole session) and a late test's artifact can be
missing from it. Filtering on the key asks the server for exactly the artifacts the test means.
"""
from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort


def artifacts_with_keys(*keys: str, limit: int = 200) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))),
            sort=ArtifactSort.CREATED_DESC, limit=limit)
