"""Name → network class registries. Each network module registers itself; see models/__init__."""

from medsyn.registry import Registry

GENERATORS: Registry = Registry("generator")
DISCRIMINATORS: Registry = Registry("discriminator")
