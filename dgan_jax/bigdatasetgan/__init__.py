"""BigDatasetGAN: BigGAN as a labelled-data generator (head.py, layout.py, train.py,
factory.py, stages.py)."""
