"""``chains-transfer``: a transferable Boltzmann generator for 2-D bead chains (Prose's idea, toy scale).

Training: one :class:`~flowforge.normalizing.transferable.TransferableTARFlow` by maximum likelihood on a
family of chains (``train_lengths`` x ``per_length`` random type sequences drawn with ``family_seed``,
``n_train`` PT-MALA reference samples each; random rotations, reflections and centres). The test chain
``test_chain`` is never in the family.

``flowforge eval`` on the test chain (``--n`` proposals, default ``eval_samples``):

- ``ess``, ``logz``: zero-shot self-normalised importance sampling with the flow as proposal;
- ``logz_ref``, ``logz_error``: the reference :math:`\\log Z` (quadrature of the bonded chain times an IS
  mean of the repulsion, :meth:`~flowforge.data.chains.BeadChain.reference_log_z`) and the zero-shot error;
- ``ess_si``, ``logz_si``, ``logz_error_si``: the same after Prose's self-improvement (``si_steps`` steps of
  IS-weighted MLE on the flow's own resampled proposals, the chain's energy only; ``si_evals`` energy
  evaluations spent on it are reported too).

``flowforge sample`` draws configurations ``(n, 2 n_beads)`` of the test chain.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.data.chains import BeadChain, ChainFamilyData, chain_family, parse_types
from flowforge.normalizing import SelfImprovement, importance_sample
from flowforge.normalizing.transferable import BoundTransferableFlow, TransferableTARFlow
from flowforge.recipes.registry import Recipe, register
from flowforge.train.trainer import BatchRequest

__all__ = ["build_chains_transfer", "chains_transfer_data", "chains_transfer_evaluate", "family_of"]

METRICS = ("ess", "logz", "logz_ref", "logz_error", "ess_si", "logz_si", "logz_error_si")


def _lengths(config: dict[str, Any]) -> list[int]:
    try:
        lengths = [int(v) for v in str(config["train_lengths"]).replace("+", ",").split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(
            f"train_lengths lists chain lengths joined by +, e.g. 4+5+6+8; got {config['train_lengths']!r}"
        ) from e
    if not lengths or min(lengths) < 3 or max(lengths) > int(config["max_len"]):
        raise ValueError(f"train_lengths must lie in [3, max_len={config['max_len']}], got {lengths}")
    return lengths


def family_of(config: dict[str, Any]) -> list[str]:
    """The training chains (type strings) of a config; the test chain is excluded."""
    test = config["test_chain"]
    parse_types(test)
    if len(test) > int(config["max_len"]):
        raise ValueError(f"test_chain has {len(test)} beads but max_len={config['max_len']}; raise max_len")
    return chain_family(
        _lengths(config), int(config["per_length"]), seed=int(config["family_seed"]), exclude=[test]
    )


def build_chains_transfer(config: dict[str, Any]) -> nn.Module:
    """The transferable flow of a config."""
    return TransferableTARFlow(
        3,
        2,
        max_len=int(config["max_len"]),
        blocks=int(config["blocks"]),
        width=int(config["width"]),
        layers=int(config["layers"]),
        head_dim=int(config["head_dim"]),
    )


def chains_transfer_data(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Reference samples of every training chain, served one chain a batch (with the symmetries)."""
    fam = family_of(config)
    chains = [BeadChain(s) for s in fam]
    samples = [c.reference_samples(int(config["n_train"]), seed=0) for c in chains]
    return ChainFamilyData(samples, [c.types for c in chains]), {"family": ",".join(fam)}


def chains_transfer_generator(model: nn.Module, config: dict[str, Any]) -> BoundTransferableFlow:
    """The flow bound to the test chain (samples ``(n, 2 n_beads)``)."""
    return model.bind(parse_types(config["test_chain"]))


def chains_transfer_eval_options(config: dict[str, Any]) -> tuple[str, ...]:
    return ("n",)


def chains_transfer_evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Any,
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **_: Any,
) -> dict[str, float]:
    """Zero-shot IS on the test chain, the reference log Z, and IS after self-improvement."""
    chain = BeadChain(config["test_chain"])
    n = int(n or config["eval_samples"])
    out: dict[str, float] = {}
    if {"logz_ref", "logz_error", "logz_error_si"} & set(metrics):
        out["logz_ref"], out["logz_ref_se"] = chain.reference_log_z(int(config["ref_samples"]), seed=0)
    if {"ess", "logz", "logz_error"} & set(metrics):
        r = importance_sample(
            model.bind(chain.types), chain, n, generator=torch.Generator().manual_seed(seed)
        )
        out["ess"], out["logz"] = r.ess, r.log_z
        if "logz_ref" in out:
            out["logz_error"] = abs(r.log_z - out["logz_ref"])
    if {"ess_si", "logz_si", "logz_error_si"} & set(metrics):
        tuned = self_improve(model, chain, config, seed)
        r = importance_sample(
            tuned.bind(chain.types), chain, n, generator=torch.Generator().manual_seed(seed)
        )
        out["ess_si"], out["logz_si"] = r.ess, r.log_z
        out["si_evals"] = float(tuned.si_evals)
        if "logz_ref" in out:
            out["logz_error_si"] = abs(r.log_z - out["logz_ref"])
    return out


def self_improve(
    model: nn.Module, chain: BeadChain, config: dict[str, Any], seed: int = 0
) -> TransferableTARFlow:
    """A copy of the model fine-tuned on ``chain`` by Prose's IS-weighted self-improvement (energy only)."""
    tuned = copy.deepcopy(model).train()
    si = SelfImprovement(
        tuned.bind(chain.types),
        chain,
        teacher_weight=float(config["teacher_weight"]),
        buffer_size=int(config["si_proposals"]),
        proposals=int(config["si_proposals"]),
        refresh_every=int(config["si_refresh"]),
    )
    opt = torch.optim.Adam(tuned.parameters(), lr=float(config["si_lr"]))
    g = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(int(config["si_steps"])):
        loss = si.loss(BatchRequest(int(config["si_batch"]), g, None))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned.eval()
    tuned.si_evals = si.refreshes * int(config["si_proposals"])
    return tuned


def _no_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    return BeadChain(config["test_chain"]).reference_samples(n, seed=1)


register(
    Recipe(
        name="chains-transfer",
        summary="transferable Boltzmann generator (Prose): one TARFlow for a family of 2-D bead chains, "
        "zero-shot IS on an unseen chain, then self-improvement",
        defaults={
            "train_lengths": "4+5+6+8",
            "per_length": 3,
            "family_seed": 0,
            "test_chain": "BCACAB",
            "max_len": 16,
            "n_train": 4000,
            "blocks": 4,
            "width": 64,
            "layers": 2,
            "head_dim": 16,
            "eval_samples": 20_000,
            "ref_samples": 1_000_000,
            "si_steps": 200,
            "si_lr": 1e-4,
            "si_proposals": 4000,
            "si_refresh": 20,
            "teacher_weight": 1.0,
            "family": "",
            "si_batch": 128,
            "steps": 2000,
            "batch_size": 256,
            "lr": 2e-3,
            "warmup": 100,
            "grad_clip": 1.0,
            "ema_decay": 0.995,
            "threads": 1,
        },
        build=build_chains_transfer,
        data=chains_transfer_data,
        generator=chains_transfer_generator,
        eval_options=chains_transfer_eval_options,
        reference=_no_reference,
        evaluate=chains_transfer_evaluate,
        metrics=METRICS,
        kind="boltzmann",
    )
)
