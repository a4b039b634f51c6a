"""Converters from published checkpoint formats to dgan_jax's own."""
