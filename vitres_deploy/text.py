"""Small text helpers shared by every layer."""

from __future__ import annotations

import re


def slug(text: str, default: str = "unknown") -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``: lowercase letters, digits and single dashes.

    ``default`` stands for a text with none of those (so a slug is never empty).
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or default
