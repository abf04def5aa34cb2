"""slm-jax: Selective Language Modeling (Rho-1) in JAX/Flax."""
