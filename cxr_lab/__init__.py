"""The lab: studies and benchmarks built on cxr_jax (the product never imports it)."""
