"""RL stage: the local GRPO trainer and the verl plug-in (agent loop, reward, Hydra overrides, Ray job)."""
