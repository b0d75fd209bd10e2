"""Helpers of the Gemma 3 GRPO + LoRA course notebooks (Tunix, JAX); README "Layout" lists them."""

__version__ = "0.1.0"
