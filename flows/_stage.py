"""What every stage flow shares: params loading and a fail-fast check of the Prefect API.

(Prefect's environment is set in `flows/__init__.py`, which runs before any flow module.)
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from components.config import Params, load_params


class PrefectUnavailable(RuntimeError):
    """The configured Prefect API cannot be reached."""


def check_prefect_api(timeout: float = 5.0) -> None:
    """Fail fast, naming the server, when PREFECT_API_URL is set but does not answer."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise PrefectUnavailable(
            f"Prefect API {url} is unreachable ({exc}); start `prefect server start` or unset PREFECT_API_URL"
        ) from None


def params_for(params_path: str, overrides: list[str] | None) -> Params:
    check_prefect_api()
    return load_params(params_path, overrides or [])
