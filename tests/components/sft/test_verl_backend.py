"""The verl SFT backend: the torchrun command and its Hydra config compose, and verl's own SFT
dataset reads the stage's trajectory file with the real tiny processor.

The run itself (torchrun -m verl.trainer.sft_trainer) needs CUDA GPUs for verl's FSDP engine;
only a GPU run shows the loss falling and the checkpoint being written. The merge of such a
checkpoint is tested in tests/components/rl/test_verl_launch.py.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from sft_fixtures import ROOT

from components.config import load_params
from components.rl.verl_config import VerlConfigError
from components.sft import verl_backend as vb


def sft_params(tmp_path, *extra: str):
    return load_params(
        ROOT / "params.yaml",
        [
            "sft.backend=verl",
            f"paths.sft_dir={tmp_path / 'results'}",
            f"paths.checkpoints={tmp_path / 'checkpoints'}",
            f"paths.sft_model={tmp_path / 'models' / 'sft'}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def composed(tmp_path_factory, tiny_bundle):
    from sft_fixtures import write_handmade

    tmp = tmp_path_factory.mktemp("verl_sft")
    traj = write_handmade(tmp / "traj.parquet", n=8)
    p = sft_params(
        tmp,
        "sft.samples_per_micro_batch=2",
        "sft.micro_batches_per_step=2",
        "sft.max_steps=50",
        "sft.lr=3e-5",
        "sft.weight_decay=0.02",
        "sft.grad_clip=0.5",
        "sft.schedule=constant",
        "sft.warmup_steps=3",
        "sft.checkpoint_every=2",
        "sft.seed=5",
        "sft.max_seq_len=800",
        "sft.verl.nproc_per_node=2",
        "sft.verl.epochs=3",
        "sft.verl.extra_overrides=[data.num_workers=0]",
    )
    argv, resolved, steps, ckpt = vb.prepare_sft(p, traj, tmp / "job", model=str(tiny_bundle))
    cfg = OmegaConf.load(resolved)  # what compose_sft built (and checked) inside prepare_sft
    return p, traj, argv, resolved, steps, ckpt, cfg


def test_the_torchrun_command(composed):
    _, traj, argv, _, steps, ckpt, _ = composed
    assert argv[:6] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "verl.trainer.sft_trainer",
    ]
    assert f"data.train_files={traj.resolve()}" in argv
    assert f"trainer.default_local_dir={ckpt}" in argv
    assert argv[-1] == "data.num_workers=0"  # the user's extra overrides come last
    assert steps == 6  # 8 trajectories, 4 per step: 2 steps an epoch x 3 epochs < sft.max_steps 50


def test_sft_params_land_in_verls_config(composed, tiny_bundle):
    _, _, _, resolved, _, _, cfg = composed
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    assert {
        "data.train_batch_size": get("data.train_batch_size"),
        "optim.lr": get("optim.lr"),
        "optim.weight_decay": get("optim.weight_decay"),
        "optim.clip_grad": get("optim.clip_grad"),
        "optim.lr_scheduler_type": get("optim.lr_scheduler_type"),
        "optim.lr_warmup_steps": get("optim.lr_warmup_steps"),
        "trainer.total_training_steps": get("trainer.total_training_steps"),
        "trainer.total_epochs": get("trainer.total_epochs"),
        "trainer.save_freq": get("trainer.save_freq"),
        "trainer.seed": get("trainer.seed"),
        "trainer.n_gpus_per_node": get("trainer.n_gpus_per_node"),
        "data.max_length": get("data.max_length"),
        "data.truncation": get("data.truncation"),
        "data.use_dynamic_bsz": get("data.use_dynamic_bsz"),
        "model.path": get("model.path"),
    } == {
        "data.train_batch_size": 4,
        "optim.lr": 3e-5,
        "optim.weight_decay": 0.02,
        "optim.clip_grad": 0.5,
        "optim.lr_scheduler_type": "constant",
        "optim.lr_warmup_steps": 3,
        "trainer.total_training_steps": 6,
        "trainer.total_epochs": 3,
        "trainer.save_freq": 2,
        "trainer.seed": 5,
        "trainer.n_gpus_per_node": 2,
        "data.max_length": 800,
        "data.truncation": "error",
        "data.use_dynamic_bsz": False,
        "model.path": str(tiny_bundle.resolve()),
    }
    assert resolved.is_file()


def test_verls_sft_dataset_reads_the_trajectories(composed):
    """verl's MultiTurnSFTDataset, configured by the composed `data` section, tokenizes the
    stage's trajectory file with the tiny processor: both images become image tokens and the
    loss mask covers the assistant turns only."""
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.config import omega_conf_to_dataclass

    *_, cfg = composed
    model = omega_conf_to_dataclass(cfg.model)
    ds = create_sft_dataset(cfg.data.train_files, cfg.data, model.tokenizer, model.processor)
    assert len(ds) == 8
    item = ds[0]
    ids, mask = item["input_ids"], item["loss_mask"]
    tok = model.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    grids = item["multi_modal_inputs"]["image_grid_thw"].tolist()
    assert len(grids) == 2  # the first view and the crop
    assert int((ids == pad).sum()) == sum(t * h * w // 4 for t, h, w in grids)
    assert int(mask[ids == pad].sum()) == 0  # image tokens never carry loss
    learned = tok.decode(ids[mask.bool()])
    assert "bbox_2d" in learned and "\\boxed{" in learned
    assert "Question" not in learned and "return the sub-image" not in learned


def test_impossible_shapes_name_the_params(tmp_path, handmade):
    with pytest.raises(VerlConfigError, match=r"sft\.verl\.nproc_per_node"):
        vb.check_sft(sft_params(tmp_path, "sft.samples_per_micro_batch=3", "sft.verl.nproc_per_node=2"))
    with pytest.raises(VerlConfigError, match=r"sft\.verl\.micro_batch_size_per_gpu"):
        vb.check_sft(
            sft_params(
                tmp_path,
                "sft.samples_per_micro_batch=2",
                "sft.verl.nproc_per_node=2",
                "sft.verl.micro_batch_size_per_gpu=2",
            )
        )
    with pytest.raises(VerlConfigError, match="run_on: ray"):
        vb.check_sft(sft_params(tmp_path, "sft.verl.nnodes=2"))
    with pytest.raises(VerlConfigError, match="less than one batch"):
        vb.total_steps(sft_params(tmp_path, "sft.samples_per_micro_batch=16"), 8, str(handmade))


def test_multi_node_uses_verls_ray_sft_trainer(tmp_path):
    p = sft_params(tmp_path, "sft.verl.nnodes=2", "sft.verl.run_on=ray")
    assert vb.sft_argv(p, ["a=1"]) == ["python3", "-m", "verl.trainer.sft_trainer_ray", "a=1"]


def test_not_a_trajectory_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(VerlConfigError, match=r"bad\.parquet lack the columns \['images', 'messages'\]"):
        vb.trajectory_rows(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match="sft stage writes them"):
        vb.trajectory_rows(tmp_path / "missing.parquet")


def test_a_failing_local_run_fails_with_its_output(tmp_path):
    import sys

    from components.rl.verl_launch import VerlJobFailed

    seen: list[str] = []
    code = "print('step 1 loss 2.0'); raise SystemExit(7)"
    with pytest.raises(VerlJobFailed, match=r"(?s)exited with 7.*step 1 loss 2\.0"):
        vb._run_local([sys.executable, "-c", code], tmp_path / "train.log", seen.append)
    assert seen == ["step 1 loss 2.0"]
    assert (tmp_path / "train.log").read_text() == "step 1 loss 2.0\n"


@pytest.mark.parametrize(("impl", "unpad"), [("flash_attention_2", True), ("sdpa", False)])
def test_attention_implementation_reaches_verls_sft_model_config(tmp_path, tiny_bundle, impl, unpad):
    """sft.verl.attn_implementation is verl's `model.override_config.attn_implementation`
    (HFModelConfig loads the config with it); remove padding needs flash-attn, so sdpa drops it."""
    from sft_fixtures import write_handmade
    from verl.utils.config import omega_conf_to_dataclass

    traj = write_handmade(tmp_path / "traj.parquet", n=8)
    p = sft_params(tmp_path, f"sft.verl.attn_implementation={impl}")
    _, resolved, _, _ = vb.prepare_sft(p, traj, tmp_path / "job", model=str(tiny_bundle))
    cfg = OmegaConf.load(resolved)
    assert cfg.model.override_config.attn_implementation == impl
    assert cfg.model.use_remove_padding is unpad
    assert omega_conf_to_dataclass(cfg.model).hf_config._attn_implementation == impl
