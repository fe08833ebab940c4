"""Plain nn.Modules: generators, discriminators, feature extractors. Importing this package
registers every network in :mod:`medsyn.models.registry`."""

from medsyn.models.registry import DISCRIMINATORS, GENERATORS  # noqa: F401
from medsyn.models.generators import casnet, unet25d  # noqa: F401,E402
from medsyn.models.discriminators import nie, patchgan  # noqa: F401,E402
from medsyn.models import qu, vgg  # noqa: F401,E402
