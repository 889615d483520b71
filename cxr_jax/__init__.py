"""cxr_jax: pediatric chest X-ray (NORMAL vs PNEUMONIA) classification in JAX/Flax."""
