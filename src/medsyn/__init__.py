"""medsyn: medical image synthesis with GANs.

Faithful implementations of published synthesis methods (Nie et al. 2018, MedGAN, Qu et al.),
full volumes in and out in real units and geometry, honest metrics.
"""

__version__ = "0.1.0"
