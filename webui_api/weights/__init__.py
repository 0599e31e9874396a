"""Pinned weight files A1111 downloads on first use, and the fetcher that gets them.

    fetcher = WeightsFetcher.from_settings(settings)   # or WeightsFetcher(registry, folders, policy)
    path = fetcher.ensure("R-ESRGAN 4x+")              # blocking; await fetcher.ensure_async(name) in a route

No torch, no network at import.
"""

from webui_api.weights.fetcher import (
    ChecksumMismatch,
    DownloadFailed,
    FetchPolicy,
    WeightsFetcher,
    WeightsOffline,
    WeightsUnverified,
    fetch_command,
    mirrored_url,
)
from webui_api.weights.folders import WeightFolders
from webui_api.weights.registry import UnknownWeights, WeightFile, WeightsRegistry

__all__ = [
    "ChecksumMismatch", "DownloadFailed", "FetchPolicy", "UnknownWeights", "WeightFile", "WeightFolders",
    "WeightsFetcher", "WeightsOffline", "WeightsRegistry", "WeightsUnverified", "fetch_command", "mirrored_url",
]
