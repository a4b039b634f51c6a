"""ddpm-segmentation's Bedroom-28: openai's LSUN bedroom DDPM (guided-diffusion, 256 px),
the MLP ensemble on its decoder features (steps 50, 150, 250; output blocks 5, 6, 7, 8, 12;
8448 channels), 40 annotated photographs, 20 test images. Their mIoU: DDPM 49.4 +- 1.9,
DatasetDDPM 47.9 +- 2.9 (DatasetGAN 31.3).

Their masks number 28 parts 1..28 and background 0, which they ignore (ignore_label 0:
neither trained on nor scored). This pipeline has no ignored class: background is a 29th
class here, learned and scored like the others, so the mIoU here averages 29 classes
where theirs averages 28.

Weights (https://openaipublic.blob.core.windows.net/diffusion/jul-2021/lsun_bedroom.pt)
and data (ddpm-segmentation's datasets.tar.gz, unpacked into datasets/):
  python -m convert_weights ddpm lsun_bedroom.pt checkpoints/ddpm_bedroom256 \\
      --flags "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 \\
      --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear \\
      --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True \\
      --use_fp16 True --use_scale_shift_norm True"
  python -m dgan_jax.main --config=configs/bedroom28_ddpm.py --workdir=workdirs/bedroom28_ddpm
config.data.annotation_dir reads the plain format (image_{i}.png with mask_{i}.npy): give
datasets/bedroom_28/real/train's sorted image/.npy pairs those names.

DatasetDDPM (the generate stage): 10000 samples of the full 1000-step DDPM sampler, as
their generate_dataset.sh (8 A100s: about 12 hours for 10000). Each step is one UNet pass,
so --config.ddpm.timestep_respacing=100 (or ddim50 with --config.ddpm.sampler=ddim) costs
10x (20x) less, but draws another, less faithful dataset than the one their table
reports (guided-diffusion: the LSUN models' best samples take all 1000 steps).
docs/ddpm.md gives one step's time on a CPU.
"""

from configs import ddpm_segmentation

# ddpm-segmentation's src/data_util.py: bedroom_class and bedroom_palette.
BEDROOM_CLASSES = (
    'background', 'bed', 'bed***footboard', 'bed***headboard', 'bed***side rail', 'carpet',
    'ceiling', 'chandelier / ceiling fan blade', 'curtain', 'cushion', 'floor',
    'table/nightstand/dresser', 'table/nightstand/dresser***top', 'picture / mirrow',
    'pillow', 'lamp***column', 'lamp***shade', 'wall', 'window', 'curtain rod',
    'window***frame', 'chair', 'picture / mirror***frame', 'plinth', 'door / door frame',
    'pouf', 'wardrobe', 'plant', 'table staff')
BEDROOM_PALETTE = (255, 255, 255, 238, 229, 102, 255, 72, 69, 124, 99, 34, 193, 127, 15,
                   106, 177, 21, 248, 213, 43, 252, 155, 83, 220, 147, 77, 99, 83, 3,
                   116, 116, 138, 63, 182, 24, 200, 226, 37, 225, 184, 161, 233, 5, 219,
                   142, 172, 248, 153, 112, 146, 38, 112, 254, 229, 30, 141, 99, 205, 255,
                   74, 59, 83, 186, 9, 0, 107, 121, 0, 0, 194, 160, 255, 170, 146,
                   255, 144, 201, 185, 3, 170, 221, 239, 255, 0, 0, 53)


def get_config(arg=None):
  del arg
  return ddpm_segmentation.experiment(
      'bedroom28_ddpm', 'bedroom_28', ddpm_segmentation.OPENAI + 'lsun_bedroom.pt',
      'checkpoints/ddpm_bedroom256', BEDROOM_CLASSES, BEDROOM_PALETTE, num_annotated=40)
