"""Pretrained GAN generators that return their intermediate feature maps.

`base.Generator` is the interface; each family is its own module (stylegan1, stylegan2, biggan,
biggan_deep, ...), found by name through `base.family_class`.
"""

from dgan_jax.generators.base import FeatureSpec, Generator, Sampling, family_class
from dgan_jax.generators.biggan import BigGANArch, BigGANGenerator
from dgan_jax.generators.biggan_deep import BigGANDeepArch, BigGANDeepGenerator
from dgan_jax.generators.checkpoint import CheckpointError
from dgan_jax.generators.load import from_config, identity, load
from dgan_jax.generators.stylegan1 import StyleGAN1Arch, StyleGAN1Generator
from dgan_jax.generators.stylegan2 import StyleGAN2Arch, StyleGAN2Generator
from dgan_jax.generators.vqgan import VQGANArch, VQGANGenerator
