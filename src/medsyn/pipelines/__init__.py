"""Multi-stage workflows built on the training engine: Qu et al.'s pipeline (train every stage into
one run folder, then build a synthetic data set and measure what it does for segmentation)."""
