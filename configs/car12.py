"""DatasetGAN ADE-Car-12: the Car-20 model and annotations, evaluated on 12 classes.

The interpreter trains on the 20 car classes; predictions are mapped to the 12 test
classes with DatasetGAN's 20 -> 12 table (ids as in its trans_mask_stylegan_20classTo12).
Weights and conversion: see configs/car20.py.
  python -m dgan_jax.main --config=configs/car12.py --workdir=workdirs/car12
"""

from dgan_jax import config as config_lib

from configs import car20

# Test class of each of the 20 training classes: every car part is car body (1) unless
# it has its own test class.
CAR20_TO_12 = (0, 1, 1, 1, 2, 9, 1, 1, 10, 1, 3, 4, 1, 1, 5, 6, 1, 11, 7, 8)
CAR12_CLASSES = ('background', 'car_body', 'head light', 'licence plate', 'mirror',
                 'tail light', 'wheel', 'window', 'wind shield', 'door', 'handle', 'wheelhub')


def get_config(arg=None):
  del arg
  config = car20.car_config()
  config.data.name = 'car12'
  config.data.eval_class_map = CAR20_TO_12
  config.data.eval_class_names = CAR12_CLASSES
  config.evaluate.test_dir = 'dataset_release/annotation/testing_data/car_ade_12_class'
  return config_lib.finalize(config)
