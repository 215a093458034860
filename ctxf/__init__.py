"""ctxf: Context Forcing training for long-context autoregressive video diffusion."""

__version__ = "0.1.0"
