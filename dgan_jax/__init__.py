"""dgan_jax: DatasetGAN and BigDatasetGAN in JAX/Flax."""
