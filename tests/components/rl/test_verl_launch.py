"""The verl RL launcher: job folder, Ray job submission and log streaming, checkpoint merge.

The Ray tests start a real local Ray cluster (with its job server) and submit real jobs with the
stage's runtime env; the job runs verl's own `main_ppo` entry with the stage's overrides in
Hydra's `--cfg job` mode (compose and print, no training), loads our agent loop and reward the
way verl's workers do, and writes a checkpoint in verl's FSDP layout where the trainer would.
The merge runs verl's real model merger on it. Only a GPU cluster shows the training itself:
FSDP sharding across ranks (here one plain-tensor shard), vLLM rollouts and real checkpoints.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from verl_fixtures import bundle, canonical_parquet, params

from components.rl import verl_launch as vl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return bundle(tmp_path_factory.getbasetemp() / "verl_tiny_bundle")


def stage_params(tmp: Path, tiny: Path, *extra: str):
    train, _ = canonical_parquet(tmp / "data" / "train.parquet", params(), "train", 2)
    val, _ = canonical_parquet(tmp / "data" / "val.parquet", params(), "val", 2)
    return params(
        f"paths.sft_model={tiny}",
        f"paths.rl_model={tmp / 'models' / 'rl'}",
        f"paths.rl_dir={tmp / 'results' / 'rl'}",
        f"paths.checkpoints={tmp / 'checkpoints'}",
        f"rl.train_data={train}",
        f"rl.val_data={val}",
        *extra,
    )


def fake_fsdp_checkpoint(model_dir: Path, checkpoint_dir: Path, step: int) -> dict:
    """What verl's FSDP checkpoint manager leaves for one rank: the state dict, fsdp_config.json,
    and the Hugging Face config and processor under huggingface/."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    actor = checkpoint_dir / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # "trained": differs from the start model
    state = model.state_dict()
    torch.save(state, actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    AutoConfig.from_pretrained(model_dir).save_pretrained(actor / "huggingface")
    AutoProcessor.from_pretrained(model_dir).save_pretrained(actor / "huggingface")
    (checkpoint_dir / "latest_checkpointed_iteration.txt").write_text(str(step))
    return state


def test_prepare_job_writes_the_job_folder(tmp_path, tiny):
    p = stage_params(tmp_path, tiny)
    argv, env, resolved = vl.prepare_job(p, tmp_path / "job")
    assert argv[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    assert "actor_rollout_ref.rollout.agent.agent_loop_config_path=agent_loop.yaml" in argv
    package = Path(env["working_dir"])
    assert sorted(x.name for x in package.iterdir()) == ["agent_loop.yaml"]  # nothing else travels
    assert env["py_modules"] == [str(vl.COMPONENTS_DIR)]
    cfg = yaml.safe_load(resolved.read_text())
    assert Path(cfg["trainer"]["default_local_dir"]) == (tmp_path / "checkpoints" / "rl_verl").resolve()
    assert cfg["data"]["train_files"] == str(Path(p.rl.train_data).resolve())
    assert cfg["actor_rollout_ref"]["model"]["path"] == str(tiny.resolve())
    notes = (tmp_path / "job" / "overrides.txt").read_text()
    assert (
        f"data.train_batch_size={p.rl.prompts_per_step}" in notes
        and "# rl.prompts_per_step (prompts)" in notes
    )


def test_missing_data_is_named(tmp_path, tiny):
    p = stage_params(tmp_path, tiny, f"rl.val_data={tmp_path / 'nope.parquet'}")
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet"):
        vl.prepare_job(p, tmp_path / "job")


def test_mlflow_reaches_verl_only_through_a_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert vl.tracking_env(params()) == (("console",), {})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    loggers, env = vl.tracking_env(params())
    assert loggers == ("console", "mlflow") and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_checkpoint_errors_say_what_is_missing(tmp_path):
    with pytest.raises(vl.CheckpointNotFound, match="shared with the cluster"):
        vl.last_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("5")
    with pytest.raises(vl.CheckpointNotFound, match=r"global_step_5/actor has no fsdp_config\.json"):
        vl.last_checkpoint(tmp_path)


def test_no_ray_address_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(vl.VerlJobFailed, match="RAY_ADDRESS is not set"):
        vl.ray_address()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with its job server (about 1.7 GiB, 10-30 s to start)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = ray.init(
        num_cpus=1, include_dashboard=True, dashboard_port=port, log_to_driver=False, configure_logging=False
    )
    yield f"http://{ctx.dashboard_url}"
    ray.shutdown()


@pytest.mark.slow
def test_stage_job_on_ray_then_merge(tmp_path, tiny, ray_cluster):
    """The prepared job on a real Ray job server: verl's main_ppo composes the stage's overrides
    there (passed through the job's shell), our agent loop and reward import from the shipped
    package (not this checkout), the agent-loop YAML resolves relative to the job's working dir;
    then the merge step, with verl's real model merger, on the newest checkpoint."""
    p = stage_params(tmp_path, tiny)
    argv, env, resolved = vl.prepare_job(p, tmp_path / "job")
    ckpt = yaml.safe_load(resolved.read_text())["trainer"]["default_local_dir"]
    check = textwrap.dedent(
        """
        import sys
        from omegaconf import OmegaConf
        import hydra
        from verl.utils.import_utils import resolve_config_path, load_extern_object
        entry = OmegaConf.load(resolve_config_path("agent_loop.yaml"))[0]
        cls = hydra.utils.get_class(entry._target_)
        fn = load_extern_object("pkg://components.rl.verl_reward", "compute_score")
        print("LOOP", cls.__name__, sys.modules[cls.__module__].__file__)
        print("REWARD", fn("s", "x \\\\boxed{A}", "A", {"options": ["a", "b"]})["score"])
        """
    )
    compose_only = [sys.executable, *argv[1:3], "--cfg", "job", *argv[3:]]
    script = f"{shlex.join(compose_only)} > composed.yaml && grep -q mgpo_agent composed.yaml && "
    script += shlex.join([sys.executable, "-c", check])
    lines: list[str] = []
    result = vl.run_ray_job(
        ["bash", "-c", script],
        env,
        address=ray_cluster,
        timeout_s=600,
        poll_s=1,
        log_path=tmp_path / "job.log",
        echo=lines.append,
    )
    log = (tmp_path / "job.log").read_text()
    assert result.status == "SUCCEEDED"
    assert "LOOP MGPOAgentLoop" in log and "py_modules_files" in log and "REWARD 1.0" in log
    assert any("LOOP" in x for x in lines)  # streamed while it ran

    # merge: the newest checkpoint (written here, where the trainer would leave it on shared
    # storage) replaces whatever was at paths.rl_model, weights intact
    fake_fsdp_checkpoint(tiny, Path(ckpt), 1)
    fake_fsdp_checkpoint(tiny, Path(ckpt), 3)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    Path(p.paths.rl_model).mkdir(parents=True)
    (Path(p.paths.rl_model) / "stale.txt").write_text("from an older run")
    step, folder, model_dir = vl.collect(p, resolved)
    assert (step, folder) == (3, Path(ckpt) / "global_step_3" / "actor")
    assert model_dir == Path(p.paths.rl_model) and not (model_dir / "stale.txt").exists()
    expected = torch.load(folder / "model_world_size_1_rank_0.pt", weights_only=True)
    merged = AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()
    assert merged.keys() == expected.keys()
    # the merger writes bf16 weights
    assert all(torch.equal(merged[k], expected[k].to(torch.bfloat16)) for k in expected)
    AutoProcessor.from_pretrained(model_dir)


@pytest.mark.slow
def test_a_failing_job_fails_the_stage_with_its_log_tail(tmp_path, ray_cluster):
    env = vl.runtime_env(tmp_path)
    with pytest.raises(vl.VerlJobFailed, match=r"(?s)FAILED.*about to fail"):
        vl.run_ray_job(
            [sys.executable, "-c", "print('about to fail'); raise SystemExit(3)"],
            env,
            address=ray_cluster,
            timeout_s=300,
            poll_s=1,
            echo=None,
        )


@pytest.mark.slow
def test_a_job_past_its_timeout_is_stopped(tmp_path, ray_cluster):
    env = vl.runtime_env(tmp_path)
    with pytest.raises(vl.VerlJobFailed, match="ran past 5 s"):
        vl.run_ray_job(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            env,
            address=ray_cluster,
            timeout_s=5,
            poll_s=1,
            echo=None,
        )
