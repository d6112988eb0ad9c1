"""What every stage flow shares: params loading and a fail-fast check of the Prefect API.

(Prefect's environment is set in `flows/__init__.py`, which runs before any flow module.)
"""

from __future__ import annotations

from components.config import Params, ParamsPath, load_params
from flows.preflight import PrefectUnavailable, configured_prefect_api, prefect_unreachable

__all__ = ["ParamsPath", "PrefectUnavailable", "check_prefect_api", "params_for"]


def check_prefect_api(timeout: float = 5.0) -> None:
    """Fail fast, naming the server, when a configured Prefect API does not answer."""
    why = prefect_unreachable(configured_prefect_api(), timeout)
    if why:
        raise PrefectUnavailable(why)


def params_for(params_path: ParamsPath, overrides: list[str] | None) -> Params:
    """Validated params of one file or of a base file and its overlays (then the overrides)."""
    check_prefect_api()
    return load_params(params_path, overrides or [])
