"""The four ddpm-segmentation configs against guided_diffusion and ddpm-segmentation: each
loads; the MODEL_FLAGS its how_to_get tells the user to convert with, parsed by
guided_diffusion's own argparser and built by its create_model_and_diffusion on the meta
device (no 550 M parameters allocated), has the state-dict keys and shapes our converter
checks a checkpoint against; the decoder blocks it hooks have the resolutions and channels
guided_diffusion's output_blocks produce (a meta-device forward pass), and the pixel
feature vector the interpreter sees is ddpm-segmentation's "dim", 8448."""

import argparse
import functools
import importlib
import shlex

import pytest

from convert_weights import ddpm as convert_ddpm
from dgan_jax import features
from dgan_jax.generators import ddpm

torch = pytest.importorskip('torch')
script_util = pytest.importorskip('guided_diffusion.script_util')

# ddpm-segmentation's experiments/<category>/ddpm.json: number_class, training_number,
# testing_path; every one: steps [50, 150, 250], blocks [5, 6, 7, 8, 12], dim 8448.
EXPERIMENTS = {
    'bedroom28_ddpm': ('bedroom_28', 29, 40, 'lsun_bedroom.pt'),
    'ffhq34_ddpm': ('ffhq_34', 34, 20, 'ffhq.pt'),
    'cat15_ddpm': ('cat_15', 15, 30, 'lsun_cat.pt'),
    'horse21_ddpm': ('horse_21', 21, 30, 'lsun_horse.pt'),
}
DIM = 8448


def _convert_words(config) -> list[str]:
  command = config.generator.how_to_get.split(': ', 1)[1]
  words = shlex.split(command)
  assert words[:4] == ['python', '-m', 'convert_weights', 'ddpm'], command
  return words


@functools.lru_cache(maxsize=None)
def _guided_diffusion(flags: str):
  """(state-dict shapes, output block shapes [(resolution, channels)]) of the UNet that
  guided_diffusion builds for MODEL_FLAGS, on the meta device."""
  parser = argparse.ArgumentParser()
  defaults = script_util.model_and_diffusion_defaults()
  script_util.add_dict_to_argparser(parser, defaults)
  args = script_util.args_to_dict(parser.parse_args(shlex.split(flags)), defaults.keys())
  with torch.device('meta'):
    model, _ = script_util.create_model_and_diffusion(**args)
  if args['use_fp16']:
    model.convert_to_fp16()   # the input is cast to the blocks' dtype in forward
  outputs = {}
  for k, block in enumerate(model.output_blocks):
    block.register_forward_hook(
        lambda module, inputs, out, k=k: outputs.__setitem__(k, tuple(out.shape)))
  size = args['image_size']
  with torch.no_grad():
    model(torch.empty(1, 3, size, size, device='meta'), torch.zeros(1, device='meta'))
  blocks = [(outputs[k][2], outputs[k][1]) for k in range(len(model.output_blocks))]
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}, blocks


@pytest.mark.parametrize('name', sorted(EXPERIMENTS))
def test_config_builds_guided_diffusions_unet_and_ddpm_segmentations_features(name):
  category, num_classes, num_annotated, model_file = EXPERIMENTS[name]
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.data.num_classes == len(config.data.class_names) == num_classes
  assert config.data.num_annotated == num_annotated
  assert config.data.annotation_dir == f'datasets/{category}/real/train'
  assert config.evaluate.test_dir == f'datasets/{category}/real/test'
  assert tuple(config.ddpm.steps) == (50, 150, 250)
  assert tuple(config.ddpm.blocks) == (5, 6, 7, 8, 12)
  assert tuple(config.data.feature_size) == (256, 256)
  assert config.ddpm.sampler == 'ddpm' and config.ddpm.timestep_respacing == ''

  words = _convert_words(config)
  assert words[4] == model_file and words[5] == config.generator.checkpoint
  flags = words[words.index('--flags') + 1]
  reference_shapes, reference_blocks = _guided_diffusion(flags)
  arch = convert_ddpm.arch_from_flags(convert_ddpm.parse_flags(flags))
  assert arch.image_size == 256 and arch.learn_sigma
  assert convert_ddpm.source_shapes(arch) == reference_shapes

  # The generator's feature maps without its weights: its arch and selection suffice.
  g = object.__new__(ddpm.DDPMGenerator)
  g.arch = arch
  g.select_features(config.ddpm.steps, config.ddpm.blocks)
  specs = g.feature_specs
  assert [(s.height, s.channels) for s in specs] == [
      reference_blocks[b] for _ in config.ddpm.steps for b in config.ddpm.blocks]
  layout = features.layout_for(g, config.data)
  assert layout.dim == DIM and layout.output_shape == (256, 256)
