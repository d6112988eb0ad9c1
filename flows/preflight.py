"""Checks the `mgpo` command runs before any flow starts: are the MLflow and Prefect servers up?

A stage used to find an unreachable MLflow server only inside its flow, after Prefect's
temporary API had started (about 50 s on 2 cores), and Prefect reported it with a long
traceback. Here both servers are asked for `/health` at once, with a short timeout, before
any flow module is imported; a server that does not answer is one line naming its URL and
the fix. A local MLflow store (sqlite, a folder) and Prefect's temporary API (no
PREFECT_API_URL configured) are not servers and need no check.

This module imports neither prefect's flows nor mlflow (only prefect's settings, and only when
PREFECT_API_URL is not in the environment), so a failing check ends well within 5 s.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from components.config import Params
from components.tracking import TrackingUnavailable, answers, tracking_uri, unreachable

TIMEOUT_S = 2.0
"""Seconds each server has to answer (both are asked at once)."""


class PrefectUnavailable(RuntimeError):
    """The configured Prefect API cannot be reached."""


def configured_prefect_api(settings: bool = True) -> str | None:
    """PREFECT_API_URL as Prefect reads it (environment, then with `settings` its profile and
    settings files); None: a temporary API."""
    url = os.environ.get("PREFECT_API_URL")
    if url or not settings:
        return url or None
    from prefect.settings import get_current_settings  # ~1-2 s; only without the variable

    url = get_current_settings().api.url
    return str(url) if url else None


def prefect_unreachable(url: str | None, timeout: float = TIMEOUT_S) -> str | None:
    """The one-line error for a configured Prefect API that does not answer, else None."""
    if not url:
        return None
    why = answers(url.rstrip("/") + "/health", timeout)
    if why is None:
        return None
    return (
        f"Prefect API {url} is unreachable ({why}); start `prefect server start` or unset "
        "PREFECT_API_URL (the run then starts a temporary API of its own)"
    )


def check_services(
    params: Params, *, mlflow: bool = True, prefect: bool = True, prefect_settings: bool = True
) -> None:
    """Raise TrackingUnavailable or PrefectUnavailable, naming the URL, when a server is down.

    `prefect_settings=False` looks only at the environment's PREFECT_API_URL (no prefect import).
    """
    uri = tracking_uri(params.tracking) if mlflow else ""
    api = configured_prefect_api(prefect_settings) if prefect else None
    with ThreadPoolExecutor(max_workers=2) as pool:
        tracking = pool.submit(unreachable, uri, TIMEOUT_S)
        orchestration = pool.submit(prefect_unreachable, api)
        tracking_why, prefect_why = tracking.result(), orchestration.result()
    if tracking_why:
        raise TrackingUnavailable(tracking_why)
    if prefect_why:
        raise PrefectUnavailable(prefect_why)
