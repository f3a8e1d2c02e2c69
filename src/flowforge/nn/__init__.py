"""Networks: every continuous-time network is called ``net(x, t, **cond)``."""

from flowforge.nn.embeddings import FourierTime
from flowforge.nn.mlp import MLP
from flowforge.nn.transformer import CausalTransformer, KVCache, StaticKVCache

__all__ = ["MLP", "FourierTime", "CausalTransformer", "KVCache", "StaticKVCache"]
