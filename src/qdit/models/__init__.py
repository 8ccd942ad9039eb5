"""Architecture knowledge: model adapters (our DiT, diffusers DiT and PixArt, any module by name
patterns), the embedded model and the loaders."""

from qdit.models.adapter import (
    ModelAdapter,
    PatternAdapter,
    attach_adapter,
    get_adapter,
    register_adapter,
    register_factory,
)
from qdit.models.diffusers_models import DiffusersDiTAdapter, PixArtAdapter, set_captions
from qdit.models.latte import VideoDiTAdapter

register_adapter(DiffusersDiTAdapter())
register_adapter(PixArtAdapter())
register_adapter(VideoDiTAdapter())

__all__ = [
    "ModelAdapter", "PatternAdapter", "attach_adapter", "get_adapter", "register_adapter", "register_factory",
    "set_captions",
]  # fmt: skip
