"""Model runners: the Paddle decoder over the paged KV cache, its reference, sampling and loading."""
