"""What the four ddpm-segmentation experiments share (bedroom28_ddpm, ffhq34_ddpm,
cat15_ddpm, horse21_ddpm): the 256 px guided-diffusion UNet of openai's LSUN models (and of
ddpm-segmentation's own ffhq.pt, trained with the same flags), their feature selection
(experiments/<name>/ddpm.json) and their DatasetDDPM sampling (generate_dataset.sh).

Not a config itself: each experiment file calls `experiment`.
"""

from dgan_jax import config as config_lib

# guided-diffusion's README (LSUN models) and ddpm-segmentation's scripts/ddpm/*.sh; the
# converter reads the architecture from them (dropout and use_fp16 do not change it).
MODEL_FLAGS = ('--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 '
               '--dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear '
               '--num_channels 256 --num_head_channels 64 --num_res_blocks 2 '
               '--resblock_updown True --use_fp16 True --use_scale_shift_norm True')
OPENAI = 'https://openaipublic.blob.core.windows.net/diffusion/jul-2021/'
YANDEX = ('https://storage.yandexcloud.net/yandex-research/ddpm-segmentation/models/'
          'ddpm_checkpoints/')
DATASETS = 'https://storage.yandexcloud.net/yandex-research/ddpm-segmentation/datasets.tar.gz'
STEPS = (50, 150, 250)
BLOCKS = (5, 6, 7, 8, 12)
FEATURE_CHANNELS = 8448   # their "dim" for these steps and blocks


def convert_command(model_file: str, checkpoint: str) -> str:
  return f'python -m convert_weights ddpm {model_file} {checkpoint} --flags "{MODEL_FLAGS}"'


def experiment(name: str, category: str, model_url: str, checkpoint: str,
               class_names: tuple[str, ...], palette: tuple[int, ...], num_annotated: int):
  """The config of ddpm-segmentation's experiments/<category>/ddpm.json and
  datasetDDPM.json: the model of `model_url` converted into `checkpoint`, their
  datasets.tar.gz unpacked in datasets/ (real/train annotates, real/test evaluates)."""
  model_file = model_url.rsplit('/', 1)[1]
  config = config_lib.base()
  config.generator.checkpoint = checkpoint
  config.generator.how_to_get = (
      f'Download {model_url} and convert it: {convert_command(model_file, checkpoint)}')
  config.data.name = name
  config.data.num_classes = len(class_names)
  config.data.class_names = class_names
  config.data.palette = palette
  config.data.crop_rows = ()
  config.data.feature_size = (256, 256)   # every map resized to the image (collect_features)
  config.data.annotation_dir = f'datasets/{category}/real/train'
  config.data.num_annotated = num_annotated
  config.data.min_segment_pixels = 0      # their masks are used as drawn
  config.interpreter.num_members = 10     # model_num
  config.interpreter.batch_size = 64
  # 8448 values per pixel: bfloat16 native maps keep Bedroom-28's 40 images in 3.3 GB of
  # host memory (float32: 5.1 GB; ddpm-segmentation's feature matrix: 88.6 GB).
  config.interpreter.feature_dtype = 'bfloat16'
  config.ddpm.steps = STEPS
  config.ddpm.blocks = BLOCKS
  # DatasetDDPM (scripts/datasetDDPM/generate_dataset.sh, train_deeplab.sh): 10000 samples
  # of the full 1000-step ancestral sampler, clipped, the most uncertain 10% dropped
  # (image score: the mean of its top 10% pixel JS values), DeepLab at 256 px.
  config.ddpm.sampler = 'ddpm'
  config.ddpm.timestep_respacing = ''     # every one of the 1000 steps ('1000')
  config.ddpm.eta = 0.0
  config.ddpm.clip_denoised = True
  config.generate.num_samples = 10000
  config.generate.drop_fraction = 0.1
  config.generate.top_fraction = 0.1
  config.generate.dataset_name = 'datasetddpm'
  config.downstream.resolution = 256      # deeplab_res
  # Their two rows: 'labeler' (DDPM: the ensemble on each test image's features) and
  # 'synthetic' (DatasetDDPM: DeepLab on the labelled samples).
  config.downstream.runs = ('labeler', 'synthetic')
  config.evaluate.test_dir = f'datasets/{category}/real/test'
  return config_lib.finalize(config)
