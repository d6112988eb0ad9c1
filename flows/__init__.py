"""Prefect flows, one per stage. Importing this package first sets Prefect's environment.

The ephemeral API's start-up timeout is raised (a fresh Prefect home on 2 cores can miss the
default 20 s) and analytics are off (they log "database is locked" noise on sqlite). Every
`flows.*` module imports this package before prefect, so the settings always apply.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
