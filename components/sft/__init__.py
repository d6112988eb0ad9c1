"""SFT warmup stage: trajectories, the local trainer and the verl SFT trainer backend."""
