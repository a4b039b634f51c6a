"""ddpm-segmentation's Horse-21: openai's LSUN horse DDPM (guided-diffusion, 256 px), the
MLP ensemble on its decoder features (steps 50, 150, 250; output blocks 5, 6, 7, 8, 12;
8448 channels), 30 annotated photographs, 30 test images. Their mIoU: DDPM 65.0 +- 0.8,
DatasetDDPM 60.8 +- 1.0 (DatasetGAN 45.4).

Weights (https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_horse.pt,
the dropout model ddpm-segmentation uses) and data (its datasets.tar.gz, unpacked into
datasets/):
  python -m convert_weights ddpm lsun_horse.pt checkpoints/ddpm_horse256 \\
      --flags "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 \\
      --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear \\
      --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True \\
      --use_fp16 True --use_scale_shift_norm True"
  python -m dgan_jax.main --config=configs/horse21_ddpm.py --workdir=workdirs/horse21_ddpm
config.data.annotation_dir reads the plain format (image_{i}.png with mask_{i}.npy): give
datasets/horse_21/real/train's sorted image/.npy pairs those names.

DatasetDDPM (the generate stage): as configs/bedroom28_ddpm.py (10000 samples of the full
1000-step DDPM sampler; respacing's cost and saving are said there).
"""

from configs import ddpm_segmentation

# ddpm-segmentation's src/data_util.py: horse_class and horse_palette.
HORSE_CLASSES = ('background', 'person', 'back', 'barrel', 'bridle', 'chest', 'ear', 'eye',
                 'forelock', 'head', 'hoof', 'leg', 'mane', 'muzzle', 'neck', 'nostril',
                 'tail', 'thigh', 'saddle', 'shoulder', 'leg protection')
HORSE_PALETTE = (255, 255, 255, 255, 74, 70, 0, 137, 65, 0, 111, 166, 163, 0, 89,
                 255, 219, 229, 122, 73, 0, 0, 0, 166, 99, 255, 172, 183, 151, 98,
                 0, 77, 67, 143, 176, 255, 241, 38, 110, 27, 210, 105, 128, 150, 147,
                 228, 230, 158, 160, 136, 106, 79, 198, 1, 59, 93, 255, 115, 214, 209,
                 255, 47, 128)


def get_config(arg=None):
  del arg
  return ddpm_segmentation.experiment(
      'horse21_ddpm', 'horse_21', ddpm_segmentation.OPENAI + 'lsun_horse.pt',
      'checkpoints/ddpm_horse256', HORSE_CLASSES, HORSE_PALETTE, num_annotated=30)
