"""The pipeline flow under Prefect's test harness, on a small real DVC repository.

The repository has two stages whose command opens a real MLflow stage run (components.tracking)
and writes an output folder; files beside it make a stage fail once transiently or for good.
Everything is real (DVC, Prefect, MLflow on sqlite); only the stages' work is trivial, so the
flow's own behaviour (order, parent/child runs, lineage, retries, resume) is what is measured.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from components import lineage
from components.tracking import TrackingUnavailable
from flows.pipeline import StageFailed, dvc_stages, is_transient, pipeline_flow

VENV_BIN = Path(sys.executable).parent


def _runs(repo: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    return mlflow.search_runs(experiment_names=["mgpo"], output_format="list")


def test_is_transient():
    assert is_transient(1, "ERROR: Unable to acquire lock")
    assert is_transient(-9, "")
    assert is_transient(137, "")
    assert is_transient(1, "MLflow tracking server http://x is unreachable (refused)")
    assert not is_transient(1, "ValueError: bad input")
    assert not is_transient(2, "invalid params in params.yaml:\n  rl.lr: unknown key")
    assert not is_transient(-15, "", timed_out=True)


def test_stage_order_is_dvcs(toy_repo):
    assert dvc_stages(toy_repo) == ["a", "b"]


@pytest.mark.slow
def test_pipeline_lineage_retry_noop_failure_and_resume(toy_repo, prefect_harness):
    """One scenario (each pipeline run costs real processes): retry, lineage, no-op, fault, resume."""
    # 1. b fails once the way a held DVC lock does: the task retries it and the run succeeds.
    (toy_repo / "fail_b").write_text("transient-once")
    summary = pipeline_flow(str(toy_repo / "params.yaml"))
    assert [(s["stage"], s["ran"]) for s in summary["stages"]] == [("a", True), ("b", True)]
    assert (toy_repo / "attempts_b").read_text() == "2"

    runs = {r.data.tags["mgpo.stage"]: r for r in _runs(toy_repo) if r.info.status == "FINISHED"}
    parent = runs["pipeline"]
    assert parent.info.run_id == summary["parent_run_id"]
    assert parent.data.tags["mgpo.pipeline.a"] == "ran"
    assert "stage_seconds.b" in parent.data.metrics
    lock = lineage.read_lock(toy_repo)
    for stage in ("a", "b"):
        tags = runs[stage].data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags[lineage.MANAGED_TAG] == "true"
        assert len(tags["mgpo.git_commit"]) >= 40
        # Inputs at the start and outputs after the lock, both as DVC wrote them in dvc.lock.
        assert tags[lineage.DIGEST_TAG] == lineage.lock_digest(lock[stage])
        for path, md5 in lock[stage]["deps"].items():
            assert tags[lineage.tag_key(lineage.DEP_TAG, path)] == md5
        for path, md5 in lock[stage]["outs"].items():
            assert tags[lineage.tag_key(lineage.OUT_TAG, path)] == md5
        assert runs[stage].data.params["toy.stage"] == stage
    assert lock["b"]["deps"]["out/a"] == lock["a"]["outs"]["out/a"]
    # The failed first attempt of b left a FAILED child run; it carries no output hashes.
    failed_b = [r for r in _runs(toy_repo) if r.data.tags["mgpo.stage"] == "b" and r.info.status == "FAILED"]
    assert len(failed_b) == 1 and lineage.FINALIZED_TAG not in failed_b[0].data.tags

    # 2. Nothing changed: DVC skips both stages, no stage run is opened.
    before = len(_runs(toy_repo))
    start = time.perf_counter()
    again = pipeline_flow(str(toy_repo / "params.yaml"))
    print(f"no-op pipeline rerun: {time.perf_counter() - start:.1f} s")
    assert [s["ran"] for s in again["stages"]] == [False, False]
    assert len(_runs(toy_repo)) == before + 1  # only the new parent run

    # 3. b's input changes and b hits a bug: no retry, the flow fails, DVC does not take b as done.
    (toy_repo / "b_input.txt").write_text("changed")
    (toy_repo / "fail_b").write_text("fatal")
    (toy_repo / "attempts_b").unlink()
    with pytest.raises(StageFailed, match="stage b: bad input") as exc:
        pipeline_flow(str(toy_repo / "params.yaml"))
    assert exc.value.stage == "b"
    assert (toy_repo / "attempts_b").read_text() == "1"
    assert (toy_repo / "out/b/part.txt").is_file()  # partial output on disk ...
    assert lineage.read_lock(toy_repo)["b"]["deps"]["b_input.txt"] == lock["b"]["deps"]["b_input.txt"]
    status = subprocess.run(["dvc", "status", "b"], cwd=toy_repo, capture_output=True, text=True)
    assert "changed deps" in status.stdout  # ... and DVC still sees b as to be run
    pipelines = [r for r in _runs(toy_repo) if r.data.tags["mgpo.stage"] == "pipeline"]
    assert pipelines[0].info.status == "FAILED"
    assert pipelines[0].data.tags["mgpo.pipeline.failed_stage"] == "b"

    # 4. Fixed: the rerun resumes at b.
    (toy_repo / "fail_b").unlink()
    summary = pipeline_flow(str(toy_repo / "params.yaml"))
    assert [(s["stage"], s["ran"]) for s in summary["stages"]] == [("a", False), ("b", True)]
    assert (toy_repo / "out/b/done.txt").is_file()


def test_unreachable_tracking_server_fails_before_any_stage(toy_repo, prefect_harness, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(
        TrackingUnavailable, match=r"MLflow tracking server http://127.0.0.1:9 is unreachable"
    ):
        pipeline_flow(str(toy_repo / "params.yaml"))
    assert time.perf_counter() - start < 30
    assert not (toy_repo / "out").exists()


def test_cli_pipeline_with_unreachable_prefect_fails_fast(toy_repo):
    env = {**__import__("os").environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    start = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / "mgpo"), "pipeline"],
        cwd=toy_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    seconds = time.perf_counter() - start
    assert "Prefect API http://127.0.0.1:9/api is unreachable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not (toy_repo / "out").exists()
    assert seconds < 5, f"mgpo pipeline with an unreachable Prefect API failed in {seconds:.1f} s"


def test_the_champion_of_an_http_registry_is_read_through_its_rest_api():
    import http.server
    import json
    import threading

    from flows.uptodate import registry_champion

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/api/2.0/mlflow/registered-models/alias?name=m&alias=champion"
            body = json.dumps({"model_version": {"name": "m", "version": "4"}}).encode()
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(body if ok else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        assert registry_champion(uri, "m") == "4"
        assert registry_champion(uri, "other") is None  # 404: fall back to the gate's record
    finally:
        server.shutdown()
    assert registry_champion("http://127.0.0.1:9", "m") is None


def test_stages_share_the_flows_prefect_api(prefect_harness):
    """Stage commands get the pipeline's Prefect API, instead of starting a server each."""
    from prefect import flow

    from flows.pipeline import prefect_api_url, stage_env

    @flow
    def probe() -> str | None:
        return prefect_api_url()

    url = probe()
    assert url and url.startswith("http://127.0.0.1:") and url.endswith("/api")
    check_prefect_api_env = stage_env("run123", "sqlite:///x.db", url)
    assert check_prefect_api_env["PREFECT_API_URL"] == url
    assert check_prefect_api_env["MGPO_PARENT_RUN_ID"] == "run123"


def test_an_up_to_date_pipeline_exits_in_seconds_without_a_flow(toy_repo, monkeypatch):
    """`dvc status` clean: `mgpo pipeline` says so, names the report and the champion, and
    starts no Prefect flow (so no parent MLflow run); before, a no-op took 40-65 s."""
    subprocess.run(["dvc", "repro", "-q"], cwd=toy_repo, check=True, capture_output=True)
    (toy_repo / "results/evaluate").mkdir(parents=True)
    (toy_repo / "results/evaluate/report.html").write_text("<html></html>")
    (toy_repo / "results/promotion.json").write_text('{"champion_version": "7"}')
    before = len(_runs(toy_repo))
    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"}
    start = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / "mgpo"), "pipeline"],
        cwd=toy_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "every stage is up to date" in proc.stdout
    assert f"evaluation report {toy_repo / 'results/evaluate/report.html'}" in proc.stdout
    assert "models:/mgpo-embedded@champion is version 7" in proc.stdout  # no registry here: the record
    assert len(_runs(toy_repo)) == before  # no flow, no parent run
    print(f"no-op mgpo pipeline: {seconds:.1f} s")
    assert seconds < 10

    # The registry's champion wins over the record (a rollback writes no record); Prefect is
    # not even imported.
    client = mlflow.MlflowClient()
    client.create_registered_model("mgpo-embedded")
    version = client.create_model_version("mgpo-embedded", source=str(toy_repo)).version
    client.set_registered_model_alias("mgpo-embedded", "champion", version)
    probe = "import sys; from flows.cli import main; rc = main(['pipeline']); sys.exit(rc + 10 * ('prefect' in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=toy_repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert f"models:/mgpo-embedded@champion is version {version}\n" in proc.stdout

    # Something stale: the flow runs as before (here a stand-in records the call).
    import flows.pipeline as pipeline
    from flows.uptodate import stale_stages

    (toy_repo / "b_input.txt").write_text("changed")
    assert stale_stages(toy_repo) == ["b"]
    calls = []
    monkeypatch.setattr(pipeline, "pipeline_flow", lambda *a: calls.append(a))
    assert pipeline.run(str(toy_repo / "params.yaml"), []) == 0
    assert calls == [(str(toy_repo / "params.yaml"), [])]
    (toy_repo / "b_input.txt").write_text("first")
    calls.clear()
    assert pipeline.run(str(toy_repo / "params.yaml"), []) == 0 and calls == []


TOY_REST = """rl:
  lr: 0.1
evaluate:
  models: {sft: models/sft, rl: models/rl}
  benchmarks: {synthetic_test: data/processed/synthetic/test.parquet}
pipeline:
  retry_delay_s: 0
"""


def test_overlays_and_overrides_are_written_into_params_yaml(toy_repo, tmp_path):
    """DVC's stages read only params.yaml: `mgpo pipeline --params params.yaml --params X -S k=v`
    writes X (deep-merged, as the loader merges it) and then the overrides into it, keeps its
    comments, and writing again changes nothing; a base that is not params.yaml is refused."""
    from components.config import load_params
    from flows.uptodate import params_file_problem, up_to_date, write_params_file

    params_yaml = toy_repo / "params.yaml"
    params_yaml.write_text("# toy params\nprepare:\n  seed: 0      # generator seed\n" + TOY_REST)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("prepare:\n  seed: 5\nrl:\n  max_steps: 3\nevaluate:\n  modes: [mgpo]\n")
    files = [str(params_yaml), str(overlay)]
    expected = load_params(files, ["rl.lr=0.5"])

    assert up_to_date(files, ["rl.lr=0.5"], expected) is None  # stale: DVC has never run a
    text = params_yaml.read_text()
    assert "# toy params" in text and "# generator seed" in text
    assert load_params(params_yaml) == expected  # params.yaml alone now holds what the run uses
    write_params_file(files, ["rl.lr=0.5"])
    assert params_yaml.read_text() == text

    assert params_file_problem([str(overlay)]).startswith("no dvc.yaml beside")
    other = toy_repo / "preset.yaml"
    other.write_text("rl:\n  max_steps: 2\n")
    problem = params_file_problem([str(other), str(overlay)])
    assert "DVC's stages read params.yaml" in problem and f"--params {other}" in problem
