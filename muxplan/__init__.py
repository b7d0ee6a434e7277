"""muxplan: place many LLMs on shared GPUs (spatial-temporal multiplexing), simulate and deploy the plan."""

__version__ = "0.1.0"
