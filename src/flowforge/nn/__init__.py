"""Networks: every continuous-time network is called ``net(x, t, **cond)``."""

from flowforge.nn.embeddings import FourierTime
from flowforge.nn.mlp import MLP
from flowforge.nn.policy import PolicyMLP, shared_trunk_policies
from flowforge.nn.transformer import CausalTransformer, KVCache

__all__ = ["MLP", "FourierTime", "CausalTransformer", "KVCache", "PolicyMLP", "shared_trunk_policies"]
