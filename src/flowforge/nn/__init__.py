"""Networks: every continuous-time network is called ``net(x, t, **cond)``; ``MADE`` is the masked
conditioner of the normalizing-flow layers; ``PolicyMLP`` the GFlowNet policy."""

from flowforge.nn.classifier import SmallCNN
from flowforge.nn.embeddings import FourierTime
from flowforge.nn.made import MADE
from flowforge.nn.mlp import MLP
from flowforge.nn.policy import PolicyMLP, shared_trunk_policies
from flowforge.nn.transformer import CausalTransformer, KVCache, StaticKVCache

__all__ = [
    "MLP",
    "MADE",
    "FourierTime",
    "CausalTransformer",
    "KVCache",
    "StaticKVCache",
    "PolicyMLP",
    "shared_trunk_policies",
    "SmallCNN",
]
