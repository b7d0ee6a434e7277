"""muxplan's own multi-model serving engine: unified paged KV pool, ADBS, SM-partitioned jobs."""
