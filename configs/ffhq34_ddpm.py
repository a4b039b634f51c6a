"""ddpm-segmentation's FFHQ-34: its own FFHQ 256 px DDPM (trained by its authors with the
flags of openai's LSUN models), the MLP ensemble on its decoder features (steps 50, 150,
250; output blocks 5, 6, 7, 8, 12; 8448 channels), 20 annotated photographs, 20 test
images. Their mIoU: DDPM 59.1 +- 1.4, DatasetDDPM 56.0 +- 0.9 (DatasetGAN 57.0).

Their ignore_label is 255, outside the 34 classes: a mask holding 255 is refused here
(one line naming the file).

Weights (https://storage.yandexcloud.net/yandex-research/ddpm-segmentation/models/ddpm_checkpoints/ffhq.pt)
and data (ddpm-segmentation's datasets.tar.gz, unpacked into datasets/):
  python -m convert_weights ddpm ffhq.pt checkpoints/ddpm_ffhq256 \\
      --flags "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 \\
      --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear \\
      --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True \\
      --use_fp16 True --use_scale_shift_norm True"
  python -m dgan_jax.main --config=configs/ffhq34_ddpm.py --workdir=workdirs/ffhq34_ddpm
config.data.annotation_dir reads the plain format (image_{i}.png with mask_{i}.npy): give
datasets/ffhq_34/real/train's sorted image/.npy pairs those names.

DatasetDDPM (the generate stage): as configs/bedroom28_ddpm.py (10000 samples of the full
1000-step DDPM sampler; respacing's cost and saving are said there).
"""

from configs import ddpm_segmentation
from configs import face34

# ddpm-segmentation's src/data_util.py: ffhq_class ('bottom lid' and 'oral commissure'
# where DatasetGAN's face classes spell 'botton lid', 'oral comisure'); ffhq_palette is
# DatasetGAN's face palette.
FFHQ_CLASSES = tuple(name.replace('botton lid', 'bottom lid')
                     .replace('oral comisure', 'oral commissure')
                     for name in face34.FACE34_CLASSES)


def get_config(arg=None):
  del arg
  return ddpm_segmentation.experiment(
      'ffhq34_ddpm', 'ffhq_34', ddpm_segmentation.YANDEX + 'ffhq.pt',
      'checkpoints/ddpm_ffhq256', FFHQ_CLASSES, face34.get_config().data.palette,
      num_annotated=20)
