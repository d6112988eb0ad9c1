"""The no-op check of `mgpo pipeline`: when DVC would run no stage, say so and start nothing.

A rerun with nothing to do used to take 40-65 s (Python, Prefect's temporary API, a parent
MLflow run) while `dvc repro` took 4 s. The CLI asks DVC first, through its Python API (what
`dvc status` reports); when every stage is up to date it prints that, the evaluation report and
the champion, and exits before Prefect is imported. Overlay files (`--params params.yaml
--params X.yaml`) and `-S` overrides are written into params.yaml before DVC is asked
(`write_params_file`), as the flow writes them. Anything stale, or a DVC that cannot tell,
runs the pipeline flow as before.

The champion is read the cheap way, without importing mlflow (about 3 s): the registry's REST
API for an HTTP server, the alias table of a local sqlite store (read-only), and otherwise the
last gate's record (`paths.promotion`), named as such.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
import urllib.request
from pathlib import Path

from components.config import Params, ParamsPath, merge_into, params_files, read_params_file
from components.tracking import tracking_uri


def stale_stages(root: str | Path) -> list[str] | None:
    """The stages `dvc repro` would run, as `dvc status` reports them: [] when all are up to
    date, None when DVC cannot tell (a lock held by another run, a broken dvc.yaml: the flow
    then runs and `dvc repro` names the problem)."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return sorted(repo.status())
    except Exception:  # DVC raises many types; the flow reports them properly
        return None


def registry_champion(uri: str, name: str, timeout: float = 2.0) -> str | None:
    """The version holding `champion` in the registry at `uri`, or None (not known cheaply)."""
    try:
        if uri.startswith(("http://", "https://")):
            query = urllib.parse.urlencode({"name": name, "alias": "champion"})
            url = f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return str(json.load(resp)["model_version"]["version"])
        if uri.startswith("sqlite:///"):
            path = Path(uri.removeprefix("sqlite:///"))
            if not path.is_file():
                return None
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout) as db:
                rows = db.execute(
                    "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = 'champion'",
                    (name,),
                ).fetchall()
            return str(rows[0][0]) if len(rows) == 1 else None
    except Exception:  # an older schema, a server error: fall back to the gate's record
        return None
    return None


def champion_line(params: Params, root: Path) -> str | None:
    name = params.tracking.registered_model
    version = registry_champion(tracking_uri(params.tracking), name)
    if version:
        return f"models:/{name}@champion is version {version}"
    record = root / params.paths.promotion  # an absolute path stays as it is
    try:
        version = json.loads(record.read_text()).get("champion_version")
    except (OSError, ValueError, AttributeError):
        return None
    return f"models:/{name}@champion is version {version} (per the last gate, {record})" if version else None


def summary(params: Params, root: Path) -> list[str]:
    lines = ["pipeline: every stage is up to date (dvc status); nothing to run, no Prefect flow started"]
    report = root / params.paths.eval_dir / "report.html"
    if report.is_file():
        lines.append(f"pipeline: evaluation report {report}")
    champion = champion_line(params, root)
    if champion:
        lines.append(f"pipeline: {champion}")
    return lines


def params_file_problem(params_path: ParamsPath) -> str | None:
    """Why the pipeline cannot run on these params files (None: it can). DVC's stages read
    params.yaml beside dvc.yaml, so the base file must be that one; overlays may be anywhere."""
    base = params_files(params_path)[0]
    root = base.resolve().parent
    if not (root / "dvc.yaml").is_file():
        return f"no dvc.yaml beside {base}: the pipeline runs DVC's stages"
    if base.name != "params.yaml":
        return (
            f"{base}: DVC's stages read params.yaml; pass it as an overlay on params.yaml "
            f"(--params {root / 'params.yaml'} --params {base}), copy it over params.yaml, or pass -S overrides"
        )
    return None


def write_params_file(params_path: ParamsPath, overrides: list[str]) -> Path:
    """Write the overlays (every params file after the base), then the -S overrides, into the
    base params.yaml: DVC's stages read only that file, and dvc.lock then records what ran.

    The overlays are deep-merged as the loader merges them (components.config.merge_into) into
    DVC's own round-trip YAML, so comments stay; the overrides go through DVC's
    `apply_overrides`, exactly as `dvc exp run -S` writes them. Writing twice changes nothing.
    """
    files = params_files(params_path)
    params_file = files[0]
    if len(files) > 1:
        from dvc.utils.serialize import modify_yaml

        with modify_yaml(params_file) as data:
            for overlay in files[1:]:
                merge_into(data, read_params_file(overlay))
    if overrides:
        from dvc.utils.hydra import apply_overrides

        apply_overrides(str(params_file), list(overrides))
    return params_file


def up_to_date(params_path: ParamsPath, overrides: list[str], params: Params) -> list[str] | None:
    """The lines to print when the pipeline has nothing to run, else None (run the flow).

    Overlays and overrides are written into params.yaml first, as the flow would (it writes the
    same again), so that DVC compares against what the run would use.
    """
    if params_file_problem(params_path):
        return None  # the flow refuses these with the reason
    root = params_files(params_path)[0].resolve().parent
    write_params_file(params_path, overrides)
    if stale_stages(root) != []:
        return None
    return summary(params, root)
