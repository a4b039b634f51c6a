"""Pretrained GAN generators that return their intermediate feature maps."""

from dgan_jax.generators.biggan import BigGANArch, BigGANGenerator
from dgan_jax.generators.biggan_deep import BigGANDeepArch, BigGANDeepGenerator
from dgan_jax.generators.checkpoint import CheckpointError
from dgan_jax.generators.load import from_config, kind_from_config, load
from dgan_jax.generators.stylegan1 import StyleGAN1Arch, StyleGAN1Generator
