"""BigDatasetGAN's own pieces: the segmentation head (head.py; trained, and wrapped as
the pipeline's 'conv_head' labeler, by train.py) and the release's data layout
(layout.py)."""
