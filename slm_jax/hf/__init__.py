"""Hugging Face checkpoints in and out (`python -m slm_jax.convert`)."""
