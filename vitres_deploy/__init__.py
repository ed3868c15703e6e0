"""vitres-deploy: a deployment-oriented model compiler for multi-stage vision transformers (ViT-ResNAS)."""

__version__ = "0.1.0"
