"""ddpm-segmentation's Cat-15: openai's LSUN cat DDPM (guided-diffusion, 256 px), the MLP
ensemble on its decoder features (steps 50, 150, 250; output blocks 5, 6, 7, 8, 12; 8448
channels), 30 annotated photographs, 20 test images. Their mIoU: DDPM 53.7 +- 3.3,
DatasetDDPM 47.6 +- 1.5 (DatasetGAN 36.5).

Weights (https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_cat.pt) and
data (ddpm-segmentation's datasets.tar.gz, unpacked into datasets/):
  python -m convert_weights ddpm lsun_cat.pt checkpoints/ddpm_cat256 \\
      --flags "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 \\
      --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear \\
      --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True \\
      --use_fp16 True --use_scale_shift_norm True"
  python -m dgan_jax.main --config=configs/cat15_ddpm.py --workdir=workdirs/cat15_ddpm
config.data.annotation_dir reads the plain format (image_{i}.png with mask_{i}.npy): give
datasets/cat_15/real/train's sorted image/.npy pairs those names.

DatasetDDPM (the generate stage): as configs/bedroom28_ddpm.py (10000 samples of the full
1000-step DDPM sampler; respacing's cost and saving are said there).
"""

from configs import ddpm_segmentation

# ddpm-segmentation's src/data_util.py: cat_class and cat_palette.
CAT_CLASSES = ('background', 'back', 'belly', 'chest', 'leg', 'paw', 'head', 'ear', 'eye',
               'mouth', 'tongue', 'nose', 'tail', 'whiskers', 'neck')
CAT_PALETTE = (255, 255, 255, 190, 153, 153, 250, 170, 30, 220, 220, 0, 107, 142, 35,
               102, 102, 156, 152, 251, 152, 119, 11, 32, 244, 35, 232, 220, 20, 60,
               52, 83, 84, 194, 87, 125, 143, 176, 255, 31, 102, 211, 104, 131, 101)


def get_config(arg=None):
  del arg
  return ddpm_segmentation.experiment(
      'cat15_ddpm', 'cat_15', ddpm_segmentation.OPENAI + 'lsun_cat.pt',
      'checkpoints/ddpm_cat256', CAT_CLASSES, CAT_PALETTE, num_annotated=30)
