"""Methods by name. Each module registers its variants in :data:`METHODS` when imported.

Adding a method is one file here plus one import line below.
"""

from medsyn.methods.base import METHODS, Method, MethodSpec, Runtime, register  # noqa: F401
from medsyn.methods import nie2018  # noqa: F401,E402
# one import line per method module:
from medsyn.methods import qu2023  # noqa: F401,E402
from medsyn.methods import medgan  # noqa: F401,E402
from medsyn.methods import brasyn  # noqa: F401,E402
