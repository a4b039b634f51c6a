"""Labelling tools in and out: the sample stage's images with the run's classes in each
tool's label format (export.py), and the tools' exports back as class-id masks
(importer.py, one reader per tool, one rasteriser: raster.py).

  python -m dgan_jax.annotations export --config=configs/car20.py --workdir=W
  python -m dgan_jax.annotations import --format=cvat SRC --config=configs/car20.py \
      --workdir=W
"""
