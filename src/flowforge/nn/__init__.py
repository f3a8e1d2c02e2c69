"""Networks: every continuous-time network is called ``net(x, t, **cond)``; ``MADE`` is the masked
conditioner of the normalizing-flow layers; ``PolicyMLP`` the GFlowNet policy."""

from flowforge.nn.classifier import SmallCNN
from flowforge.nn.dit import DiT
from flowforge.nn.egnn import EGNN
from flowforge.nn.embeddings import FourierTime, PeriodicInput
from flowforge.nn.flops import flops_per_eval
from flowforge.nn.made import MADE
from flowforge.nn.mlp import MLP
from flowforge.nn.mmdit import MMDiT, MMDiTBlock
from flowforge.nn.obs_mlp import ObsMLP
from flowforge.nn.particle_net import ParticleNet
from flowforge.nn.patch_features import PatchFeatureNet
from flowforge.nn.policy import PolicyMLP, shared_trunk_policies
from flowforge.nn.token_transformer import TokenTransformer
from flowforge.nn.transformer import CausalTransformer, KVCache, StaticKVCache
from flowforge.nn.two_times import with_two_times
from flowforge.nn.unet import UNet

__all__ = [
    "MLP",
    "ObsMLP",
    "ParticleNet",
    "PatchFeatureNet",
    "EGNN",
    "UNet",
    "DiT",
    "MMDiT",
    "MMDiTBlock",
    "MADE",
    "FourierTime",
    "PeriodicInput",
    "CausalTransformer",
    "KVCache",
    "StaticKVCache",
    "TokenTransformer",
    "PolicyMLP",
    "shared_trunk_policies",
    "SmallCNN",
    "flops_per_eval",
    "with_two_times",
]
