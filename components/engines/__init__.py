"""Generation engines (transformers; vLLM where a GPU extra is installed) and the episode driver."""
