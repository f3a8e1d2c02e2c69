"""Datasets: 2-D toy distributions, images (MNIST, digits), energies, user arrays, token sequences, molecules,
Ising-model samples (Gibbs / exact).

Layer: ``data`` imports torch, numpy and ``flowforge.core`` / ``flowforge.nn`` only; RDKit is imported
lazily by the molecule functions.
"""

from flowforge.data.aldp import (
    AlanineDipeptide,
    AlanineDipeptideInternal,
    InternalCoordinates,
    aldp_dihedrals,
)
from flowforge.data.arrays import SUPPORTED_EXTENSIONS, Standardizer, check_finite, load_array
from flowforge.data.chains import BeadChain, ChainFamilyData, ChainTypes, chain_family, parse_types
from flowforge.data.energies import (
    GMM40,
    DoubleWell4,
    Energy,
    LennardJones13,
    ManyWell,
    user_energy,
)
from flowforge.data.images import (
    ImageSet,
    dequantization_log_det,
    dequantize,
    load_digits,
    load_mnist,
    quantize,
)
from flowforge.data.ising import all_configurations, ising_exact, ising_gibbs, ising_log_probs
from flowforge.data.molecules import MOSES_SPLITS, canonical, moses, nci_5k, rdkit_available, require_rdkit
from flowforge.data.png import read_png, save_image_grid
from flowforge.data.semantic import BACKGROUND, SEG_CLASSES, semantic_agreement, semantic_map, stroke_cells
from flowforge.data.tokens import (
    PAD,
    SEQUENCE_EXTENSIONS,
    TOKENIZERS,
    CharTokenizer,
    SelfiesTokenizer,
    SmilesTokenizer,
    Vocabulary,
    bracket_words,
    expressions,
    is_balanced,
    is_valid_expression,
    load_sequences,
)
from flowforge.data.toy2d import TOY2D_NAMES, toy2d
from flowforge.data.vmf import VMFMixture, earth_like_vmf_mixture, vmf_log_prob, vmf_sample

__all__ = [
    "BeadChain",
    "ChainFamilyData",
    "ChainTypes",
    "chain_family",
    "parse_types",
    "GMM40",
    "DoubleWell4",
    "Energy",
    "LennardJones13",
    "ManyWell",
    "user_energy",
    "AlanineDipeptide",
    "AlanineDipeptideInternal",
    "InternalCoordinates",
    "aldp_dihedrals",
    "VMFMixture",
    "earth_like_vmf_mixture",
    "vmf_log_prob",
    "vmf_sample",
    "SUPPORTED_EXTENSIONS",
    "TOY2D_NAMES",
    "ImageSet",
    "Standardizer",
    "check_finite",
    "dequantization_log_det",
    "dequantize",
    "load_array",
    "load_digits",
    "load_mnist",
    "quantize",
    "read_png",
    "save_image_grid",
    "toy2d",
    "all_configurations",
    "ising_exact",
    "ising_gibbs",
    "ising_log_probs",
    "SEG_CLASSES",
    "BACKGROUND",
    "semantic_map",
    "semantic_agreement",
    "stroke_cells",
    "PAD",
    "SEQUENCE_EXTENSIONS",
    "TOKENIZERS",
    "CharTokenizer",
    "SelfiesTokenizer",
    "SmilesTokenizer",
    "Vocabulary",
    "bracket_words",
    "expressions",
    "is_balanced",
    "is_valid_expression",
    "load_sequences",
    "MOSES_SPLITS",
    "canonical",
    "moses",
    "nci_5k",
    "rdkit_available",
    "require_rdkit",
]
