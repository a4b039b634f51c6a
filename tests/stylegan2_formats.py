"""Writers of StyleGAN2 checkpoints in the official formats, from the state dicts in
../shared/golden (for tests/test_stylegan2.py and benchmarks/golden_parity.py). Pickling
needs conftest.stand_in_modules() in sys.modules."""

import ast
import collections
import pickle

import numpy as np
import torch

from conftest import Persistent, _TFNetwork, golden_path, tf_network


def load_golden(name):
  d = np.load(golden_path(f'{name}.npz'), allow_pickle=False)
  golden = {k: d[k] for k in d.files}
  meta = ast.literal_eval(str(golden.pop('meta')))   # a repr of a dict
  sd = {k[3:]: v for k, v in golden.items() if k.startswith('sd/')}
  return meta, sd, golden


BUFFERS = ('noise_const', 'resample_filter', 'w_avg')


def ada_record(sd, init_kwargs, module_src='# networks.py'):
  """The official state dict -> nested persistent module records (parameters as
  torch Parameters, buffers as tensors), as a pickled Generator holds them."""
  def node():
    return {'training': False, '_parameters': collections.OrderedDict(),
            '_buffers': collections.OrderedDict(), '_modules': collections.OrderedDict(),
            '_non_persistent_buffers_set': set(), '_init_args': (), '_init_kwargs': {}}
  root = node()
  for name, value in sd.items():
    *path, leaf = name.split('.')
    state = root
    for part in path:
      state = state['_modules'].setdefault(part, node())
    tensor = torch.from_numpy(np.array(value))
    if leaf in BUFFERS:
      state['_buffers'][leaf] = tensor
    else:
      state['_parameters'][leaf] = torch.nn.Parameter(tensor, requires_grad=False)

  def build(state, class_name):
    state['_modules'] = collections.OrderedDict(
        (k, build(v, f'training.networks.{k}')) for k, v in state['_modules'].items())
    return Persistent(class_name, state, module_src)
  root['_init_kwargs'] = init_kwargs
  return build(root, 'training.networks.Generator')


def ada_init_kwargs(meta):
  return {'z_dim': meta['z_dim'], 'c_dim': meta['c_dim'], 'w_dim': meta['w_dim'],
          'img_resolution': meta['img_resolution'], 'img_channels': 3,
          'mapping_kwargs': {'num_layers': meta['mapping_layers']},
          'synthesis_kwargs': {'channel_base': meta['channel_base'],
                               'channel_max': meta['channel_max'], 'num_fp16_res': 0,
                               'conv_clamp': meta['conv_clamp'], 'architecture': 'skip'}}


def write_ada_pickle(path, meta, sd, g_ema_src='# networks.py'):
  g_ema = ada_record(sd, ada_init_kwargs(meta), g_ema_src)
  discriminator = Persistent('training.networks.Discriminator', {
      '_parameters': collections.OrderedDict(b4=torch.zeros(3)), '_modules': {}})
  snapshot = {'G': ada_record(sd, ada_init_kwargs(meta)), 'D': discriminator,
              'G_ema': g_ema, 'augment_pipe': None,
              'training_set_kwargs': {'path': 'cars.zip', 'resolution': meta['img_resolution']}}
  with open(path, 'wb') as f:
    pickle.dump(snapshot, f, protocol=3)   # what Python 3.7's pickle.dump wrote


def tf_variables(meta, sd):
  """Official PyTorch state dict -> TF (mapping, synthesis) variables: the inverse of
  legacy.py's map ([in, out] dense, [kh, kw, in, out] conv, Conv0_up flipped, mod_bias - 1)."""
  conv = lambda w: w.transpose(2, 3, 1, 0)
  mapping = {}
  for i in range(meta['mapping_layers']):
    mapping[f'Dense{i}/weight'] = sd[f'mapping.fc{i}.weight'].T
    mapping[f'Dense{i}/bias'] = sd[f'mapping.fc{i}.bias']
  synthesis, noise = {}, 0
  resolutions = [2 ** k for k in range(2, int(np.log2(meta['img_resolution'])) + 1)]
  for r in resolutions:
    layers = [('Conv', 'conv1')] if r == 4 else [('Conv0_up', 'conv0'), ('Conv1', 'conv1')]
    if r == 4:
      synthesis['4x4/Const/const'] = sd['synthesis.b4.const'][None]
    for tf_layer, ours in layers + [('ToRGB', 'torgb')]:
      p = f'synthesis.b{r}.{ours}'
      weight = conv(sd[f'{p}.weight'])
      synthesis[f'{r}x{r}/{tf_layer}/weight'] = weight[::-1, ::-1] if ours == 'conv0' else weight
      synthesis[f'{r}x{r}/{tf_layer}/bias'] = sd[f'{p}.bias']
      synthesis[f'{r}x{r}/{tf_layer}/mod_weight'] = sd[f'{p}.affine.weight'].T
      synthesis[f'{r}x{r}/{tf_layer}/mod_bias'] = sd[f'{p}.affine.bias'] - 1
      if ours != 'torgb':
        synthesis[f'{r}x{r}/{tf_layer}/noise_strength'] = sd[f'{p}.noise_strength']
        synthesis[f'noise{noise}'] = sd[f'{p}.noise_const'][None, None]
        noise += 1
  return mapping, synthesis


def write_tf_pickle(path, meta, sd):
  mapping, synthesis = tf_variables(meta, sd)
  kwargs = dict(resolution=meta['img_resolution'], fmap_base=meta['channel_base'] // 2,
                fmap_max=meta['channel_max'], architecture='skip', conv_clamp=meta['conv_clamp'])
  gs = tf_network(_TFNetwork, 'G', {'dlatent_avg': sd['mapping.w_avg']}, {
      'mapping': tf_network(_TFNetwork, 'G_mapping', mapping, mapping_lrmul=0.01),
      'synthesis': tf_network(_TFNetwork, 'G_synthesis', synthesis, **kwargs)}, **kwargs)
  discriminator = tf_network(_TFNetwork, 'D', {'4x4/Dense0/weight': np.zeros((2, 2))})
  with open(path, 'wb') as f:
    pickle.dump((gs, discriminator, gs), f, protocol=2)
