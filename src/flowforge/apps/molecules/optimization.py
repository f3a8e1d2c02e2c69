r"""Property optimisation with a uniform-source discrete flow: InVirtuoGen's GA + PPO loop, at a fixed budget.

Kaech et al. 2025, arXiv:2509.26405 (code ``in_virtuo_reinforce/genetic_ppo.py``). Three modes share one
oracle budget, so their top-10 AUCs compare:

- ``"ga+ppo"``: offspring are the flow's refinements of crossover prompts (:func:`~.genetic.brics_crossover`
  of rank-weighted parents from the top-10 :class:`~.genetic.CrossoverPrompter`), plus RDKit mutants; once
  ``ppo_batch`` new scored molecules are collected, ``reinforce_steps`` :class:`~flowforge.finetune.DiscretePPO`
  passes update the flow and :math:`\pi_{old}` is refreshed;
- ``"ga"``: the same offspring mechanism, no model updates ("no PPO" ablation);
- ``"sample"``: the base model alone, fresh uniform sources every round, no GA, no PPO;
- ``"graph-ga"``: the genetic algorithm alone, no flow after the first population: the crossover children
  are scored as they are (a Graph-GA-style baseline, Jensen 2019, with InVirtuoGen's operators).

Each round: generate, decode, drop invalid SMILES (the validity share is recorded), score the new ones (cached
repeats are free), feed the vocabulary. The loop ends when the budget is spent or ``patience`` rounds in a row
bring no new molecule. Not carried over from InVirtuoGen: the prescreen of ZINC250k, the length bandit (the
prompt's own ``<pad>`` tail sets the length), experience replay, the cosine learning-rate schedule and the
early stop on a top-10 sum of 9.99.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.apps.molecules.genetic import CrossoverPrompter, brics_crossover, encode_prompts, mutate
from flowforge.apps.molecules.oracle import Oracle, top_k_auc, top_k_mean
from flowforge.data.tokens import Vocabulary
from flowforge.finetune import DiscretePPO

__all__ = ["MODES", "History", "optimize"]

#: the optimisation modes
MODES = ("ga+ppo", "ga", "sample", "graph-ga")


@dataclass
class History:
    """What an optimisation run did, in oracle-call order.

    Attributes:
        mode, seed, budget: the run's settings.
        scores, smiles: oracle scores and canonical SMILES in call order.
        generated, valid: sequences the flow generated and how many decoded to valid molecules.
        rounds, ppo_updates: GA rounds run, PPO gradient steps taken.
        stopped: ``"budget"`` or ``"stalled"`` (no new molecule in ``patience`` rounds).
        wall_time: seconds.
    """

    mode: str
    seed: int
    budget: int
    scores: list[float] = field(default_factory=list)
    smiles: list[str] = field(default_factory=list)
    generated: int = 0
    valid: int = 0
    rounds: int = 0
    ppo_updates: int = 0
    stopped: str = ""
    wall_time: float = 0.0

    @property
    def oracle_calls(self) -> int:
        return len(self.scores)

    @property
    def validity(self) -> float:
        """Share of the flow's generated sequences that are valid molecules."""
        return self.valid / self.generated if self.generated else 0.0

    @property
    def top10_auc(self) -> float:
        """PMO top-10 AUC (freq 100) over the budget."""
        return top_k_auc(self.scores, 10, 100, budget=self.budget)

    @property
    def top10_mean(self) -> float:
        return top_k_mean(self.scores, 10)

    def summary(self) -> dict[str, Any]:
        """The headline numbers: ``top10_auc``, ``top10_mean``, ``validity``, ``oracle_calls`` and the rest."""
        return {
            "top10_auc": self.top10_auc,
            "top10_mean": self.top10_mean,
            "validity": self.validity,
            "oracle_calls": self.oracle_calls,
            "mode": self.mode,
            "seed": self.seed,
            "budget": self.budget,
            "rounds": self.rounds,
            "ppo_updates": self.ppo_updates,
            "stopped": self.stopped,
            "wall_time": self.wall_time,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (the summary plus the call-order lists)."""
        return {**self.summary(), **asdict(self)}


def _resolve_mode(mode: str | None, use_ppo: bool | None) -> str:
    if use_ppo is not None:
        if mode not in (None, "ga+ppo", "ga"):
            raise ValueError(f"use_ppo={use_ppo} contradicts mode={mode!r}; give one of them")
        return "ga+ppo" if use_ppo else "ga"
    mode = "ga+ppo" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


def optimize(
    model: nn.Module,
    vocab: Vocabulary,
    oracle: Oracle | str | Callable[[list[str]], Sequence[float]],
    *,
    budget: int | None = None,
    mode: str | None = None,
    use_ppo: bool | None = None,
    seed: int = 0,
    population: int = 100,
    offspring: int = 100,
    mutations: int = 20,
    steps: int = 64,
    temperature: float = 1.0,
    ppo_batch: int = 100,
    reinforce_steps: int = 5,
    num_timesteps: int = 10,
    lr: float = 1e-5,
    clip_eps: float = 0.2,
    c_neg: float = 1.0,
    minibatch: int = 256,
    patience: int = 5,
    log: Callable[[str], None] | None = None,
) -> History:
    r"""Optimise molecules for ``oracle`` with a uniform-source discrete flow; the model is fine-tuned in place
    in mode ``"ga+ppo"``.

    Args:
        model: a :class:`~flowforge.discrete.DiscreteFlowMatching` over ``vocab``'s ids (e.g. a trained
            ``smiles-uniform`` or ``selfies-uniform`` run).
        vocab: the run's :class:`~flowforge.data.tokens.Vocabulary` (``<pad>`` = id 0 ends a sequence). It is
            the one seam between the flow's tokens and the SMILES that the GA, the oracle and the prompts
            use: ``vocab.decode`` gives SMILES, ``vocab.tokenize(smiles)`` the flow's ids (with a
            :class:`~flowforge.data.tokens.SelfiesTokenizer`, SELFIES tokens in between).
        oracle: an :class:`~.oracle.Oracle`, or a reward (``"qed"``, ``"module:function"``, a callable) that
            is wrapped in one with ``budget`` calls.
        budget: oracle calls; with an :class:`~.oracle.Oracle` it must match the oracle's (or be None).
        mode: ``"ga+ppo"`` (default), ``"ga"`` or ``"sample"``; ``use_ppo=True/False`` means
            ``"ga+ppo"``/``"ga"``.
        seed: seeds the run's ``torch.Generator`` (sampling, parents, operators, PPO times).
        population: first samples of the base model.
        offspring: flow samples per round (prompted in the GA modes).
        mutations: RDKit mutants per round (GA modes).
        steps, temperature: the flow's sampler (CTMC Euler steps, posterior temperature).
        ppo_batch: new molecules collected before a PPO round (InVirtuoGen's ``tot_offspring_size``, 100).
        reinforce_steps: PPO passes per round (5 without prescreen).
        num_timesteps: PPO times per sequence (InVirtuoGen: 50; 10 by default here to fit a CPU).
        lr, clip_eps, c_neg, minibatch: :class:`~flowforge.finetune.DiscretePPO` settings.
        patience: rounds without a new molecule before stopping early.
        log: called with one line per round (e.g. ``print``).

    Returns:
        The :class:`History` (scores in call order, top-10 AUC and mean, validity).

    Example:
        >>> from flowforge.data.molecules import rdkit_available
        >>> from flowforge.discrete import DiscreteFlowMatching
        >>> from flowforge.nn import TokenTransformer
        >>> v = Vocabulary(["C", "O", "N", "(", ")", "=", "1", "c"])
        >>> dfm = DiscreteFlowMatching(TokenTransformer(len(v), 8, width=16, depth=1, heads=2), len(v),
        ...                            source="uniform", length=8)
        >>> h = optimize(dfm, v, "qed", budget=20, mode="ga", population=16, offspring=16, steps=4
        ...              ) if rdkit_available() else None
        >>> (h.oracle_calls <= 20, 0 <= h.top10_auc <= 1) if rdkit_available() else (True, True)
        (True, True)
    """
    mode = _resolve_mode(mode, use_ppo)
    if isinstance(oracle, Oracle):
        if budget is not None and budget != oracle.budget:
            raise ValueError(f"budget={budget} but the oracle's budget is {oracle.budget}; pass one of them")
    else:
        if budget is None:
            raise ValueError(
                "give budget=... (oracle calls) with a reward, or pass an Oracle(reward, budget=...)"
            )
        oracle = Oracle(oracle, budget=budget)
    for name, value in (("population", population), ("offspring", offspring), ("steps", steps)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    length = getattr(model, "length", None)
    if not length:
        raise ValueError("the model has no sequence length; build DiscreteFlowMatching(..., length=L)")
    t0 = time.time()
    g = torch.Generator().manual_seed(int(seed))
    hist = History(mode=mode, seed=int(seed), budget=oracle.budget)
    prompter = CrossoverPrompter()
    ppo = None
    if mode == "ga+ppo":
        ppo = DiscretePPO(
            model,
            lr=lr,
            clip_eps=clip_eps,
            c_neg=c_neg,
            num_timesteps=num_timesteps,
            minibatch=minibatch,
            pad_id=vocab.pad_id,
        )
    device = next(model.parameters()).device
    buf_x: list[Tensor] = []
    buf_r: list[float] = []

    def generate(n: int, x0: Tensor | None) -> tuple[Tensor, list[str]]:
        was = model.training
        model.eval()
        with torch.no_grad():
            x = model.generator().sample(n, steps=steps, temperature=temperature, generator=g, x0=x0)
        model.train(was)
        return x, vocab.decode(x)

    def score_flow(x: Tensor, strings: list[str]) -> int:
        res = oracle.score(strings)
        hist.generated += len(strings)
        hist.valid += sum(c is not None for c in res.canonical)
        fresh = [i for i, is_new in enumerate(res.new) if is_new]
        prompter.update([res.canonical[i] for i in fresh], [res.scores[i] for i in fresh])
        for i in fresh:
            buf_x.append(x[i])
            buf_r.append(float(res.scores[i]))
        return len(fresh)

    def score_ga(strings: list[str]) -> tuple[Any, list[int]]:
        """Score GA-made SMILES (children, mutants), feed the new ones to the vocabulary; return them."""
        res = oracle.score(strings)
        fresh = [i for i, is_new in enumerate(res.new) if is_new]
        prompter.update([res.canonical[i] for i in fresh], [res.scores[i] for i in fresh])
        return res, fresh

    def noise(n: int) -> Tensor:
        return model.source.sample((n, length), g, device=device)

    calls_before = oracle.calls
    x, s = generate(population, None)
    score_flow(x, s)
    stall = 0 if oracle.calls > calls_before else 1
    while not oracle.exhausted and stall < patience:
        calls_before = oracle.calls
        hist.rounds += 1
        if mode == "graph-ga" and len(prompter):  # the children themselves, no flow
            kids = [brics_crossover(a, b, g) for a, b in prompter.parents(offspring, g)]
            score_ga([k for k in kids if k])
        else:
            if mode == "sample" or not len(prompter):
                x, s = generate(offspring, None)
            else:
                kids = [brics_crossover(a, b, g) or a for a, b in prompter.parents(offspring, g)]
                x0, _ = encode_prompts(kids, vocab, length, noise(offspring))
                x, s = generate(offspring, x0)
            score_flow(x, s)
        if mode != "sample" and len(prompter) and mutations > 0 and not oracle.exhausted:
            tenth = sorted(oracle.scores, reverse=True)[9] if oracle.calls >= 10 else -float("inf")
            mutants = [m for m in (mutate(prompter.parent(g), g) for _ in range(mutations)) if m]
            res, fresh = score_ga(mutants)
            if ppo is not None:
                good = [i for i in fresh if res.scores[i] > tenth]
                enc, _ = encode_prompts(
                    [res.canonical[i] for i in good], vocab, length, noise(len(good)).fill_(-1)
                )
                for row, i in zip(enc, good):
                    if int(row[0]) >= 0:  # encodable with the run's vocabulary
                        buf_x.append(row)
                        buf_r.append(float(res.scores[i]))
        if ppo is not None and len(buf_r) >= ppo_batch:
            xb, rb = torch.stack(buf_x), torch.tensor(buf_r)
            for _ in range(reinforce_steps):
                hist.ppo_updates += ppo.step(xb, rb, g)["updates"]
            ppo.refresh()
            buf_x.clear()
            buf_r.clear()
        stall = 0 if oracle.calls > calls_before else stall + 1
        if log is not None:
            log(
                f"round {hist.rounds}: calls {oracle.calls}/{oracle.budget}, top-10 mean "
                f"{top_k_mean(oracle.scores):.3f}, validity {hist.validity:.3f}"
            )
    hist.stopped = "budget" if oracle.exhausted else "stalled"
    hist.scores, hist.smiles = list(oracle.scores), list(oracle.smiles)
    hist.wall_time = time.time() - t0
    return hist
