"""vitres-deploy: a deployment-oriented model compiler for multi-stage vision transformers (ViT-ResNAS)."""

from .workers import adopt_parent_death

__version__ = "0.1.0"

adopt_parent_death()  # a build worker dies with its parent from its first import on (see workers.py)
