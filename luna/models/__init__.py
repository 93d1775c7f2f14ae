"""Networks that map 3D crops to class logits."""

from luna.models.luna_model import LunaModel, LunaTrunk, MultiViewLunaModel, Network

__all__ = ["LunaModel", "LunaTrunk", "MultiViewLunaModel", "Network"]
