"""``smiles-optimize``: property optimisation of a trained ``smiles-uniform`` run (InVirtuoGen's GA + PPO).

The base can equally be a ``selfies-uniform`` run (``--set init_from=runs/selfies-uniform``): its vocabulary
turns the GA's SMILES prompts into SELFIES tokens and decodes samples back to SMILES, so nearly every
sample is a valid molecule.

::

    flowforge train smiles-uniform --out runs/smiles-uniform
    flowforge train smiles-optimize --out runs/opt-qed --set init_from=runs/smiles-uniform budget=2000 \\
        mode=ga+ppo reward=qed
    flowforge eval runs/opt-qed          # top10_auc, top10_mean, validity, oracle_calls
    flowforge sample runs/opt-qed --n 100 --out opt.txt

``mode``: ``ga+ppo`` (GA offspring + PPO fine-tuning), ``ga`` (same offspring, no model updates) or
``sample`` (the base model alone); ``reward``: ``qed`` or a user's ``module:function`` /
``path/to/file.py:function`` mapping a list of SMILES to a list of floats (``--set reward=mymod:score``).
See :func:`flowforge.apps.molecules.optimize` for the loop and the other keys (``population``,
``offspring``, ``mutations``, ``ppo_batch``, ``reinforce_steps``, ``num_timesteps``, ``rl_lr``, ...).

The whole budget runs inside the trainer's single step (``steps=1``): the model's ``loss`` runs the
optimisation with its own Adam and returns a constant, so the trainer's AdamW leaves the weights alone and
(with ``ema_decay=0``) the checkpoint holds the fine-tuned weights. The scores in call order are stored in
the checkpoint too (so ``eval`` reads them) and written with the summary to ``RUN/optimization.json``. The
run's seed seeds the optimisation: the same seed gives the same run.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("smiles-optimize")
    >>> r.defaults["mode"], r.defaults["budget"], r.metrics
    ('ga+ppo', 2000, ('top10_auc', 'top10_mean', 'validity', 'oracle_calls'))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowforge.recipes.discrete import TokenGenerator, _sample_kwargs, build_token_flow, vocabulary
from flowforge.recipes.registry import Recipe, register
from flowforge.recipes.run_folder import read_config

__all__ = ["MoleculeOptimization", "HISTORY_FILE", "OPT_METRICS"]

HISTORY_FILE = "optimization.json"
OPT_METRICS = ("top10_auc", "top10_mean", "validity", "oracle_calls")
_ARCH = ("vocab", "vocab_size", "length", "width", "depth", "heads", "source", "loss", "kappa_power")
_OPT_KEYS = (
    "population", "offspring", "mutations", "ppo_batch", "reinforce_steps", "num_timesteps", "clip_eps",
    "c_neg", "minibatch", "patience", "temperature",
)  # fmt: skip


class MoleculeOptimization(nn.Module):
    """A discrete flow plus the record of its optimisation; ``loss`` runs the whole budget once.

    Attributes:
        flow: the :class:`~flowforge.discrete.DiscreteFlowMatching` (fine-tuned in place in ``ga+ppo``).
        scores: ``(budget,)`` float64 buffer, the oracle scores in call order (NaN past the last call).
        counts: ``(3,)`` int64 buffer: generated sequences, valid ones, rounds.
        history: the :class:`~flowforge.apps.molecules.History` after ``loss`` ran (None before).
    """

    makes_own_batches: ClassVar[bool] = True

    def __init__(self, flow: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.flow = flow
        self.config = config
        self.register_buffer(
            "scores", torch.full((int(config["budget"]),), float("nan"), dtype=torch.float64)
        )
        self.register_buffer("counts", torch.zeros(3, dtype=torch.long))
        self.history: Any = None

    def loss(self, batch: Any) -> Tensor:
        """Run the optimisation (first call only) and return a constant 0 (its gradients are cleared)."""
        if self.history is None:
            from flowforge.apps.molecules import optimize

            c = self.config
            self.history = optimize(
                self.flow,
                vocabulary(c),
                str(c["reward"]),
                budget=int(c["budget"]),
                mode=str(c["mode"]),
                seed=int(c.get("seed", 0)),
                steps=int(c["sample_steps"]),
                lr=float(c["rl_lr"]),
                **{k: c[k] for k in _OPT_KEYS},
            )
            for p in self.flow.parameters():
                p.grad = None
            n = self.history.oracle_calls
            self.scores[:n] = torch.tensor(self.history.scores, dtype=torch.float64)
            self.counts.copy_(torch.tensor([self.history.generated, self.history.valid, self.history.rounds]))
        return torch.zeros((), requires_grad=True)

    def summary(self) -> dict[str, Any]:
        """``top10_auc``, ``top10_mean``, ``validity``, ``oracle_calls`` from the stored buffers."""
        from flowforge.apps.molecules import top_k_auc, top_k_mean

        s = self.scores[~torch.isnan(self.scores)].tolist()
        gen, valid, rounds = (int(v) for v in self.counts)
        return {
            "top10_auc": top_k_auc(s, 10, 100, budget=len(self.scores)),
            "top10_mean": top_k_mean(s, 10),
            "validity": valid / gen if gen else 0.0,
            "oracle_calls": len(s),
            "rounds": rounds,
        }


def _init_dir(config: dict[str, Any]) -> Path:
    given = str(config.get("init_from") or "")
    if not given:
        raise ValueError(
            "smiles-optimize starts from a trained smiles-uniform run: --set init_from=RUN_DIR "
            "(train one with: flowforge train smiles-uniform --out runs/smiles-uniform)"
        )
    init = Path(given).expanduser()
    if not (init / "config.json").is_file():
        raise FileNotFoundError(
            f"init_from={given}: no run folder there (no config.json); give the folder of a trained "
            "smiles-uniform run, e.g. --set init_from=runs/smiles-uniform"
        )
    return init


def check_config(config: dict[str, Any]) -> None:
    """Refuse a bad budget, mode, reward or step count with a message that says what to write."""
    from flowforge.apps.molecules import MODES, load_reward

    if int(config["budget"]) < 1:
        raise ValueError(
            f"budget must be a positive number of oracle calls, got {config['budget']}; e.g. budget=2000"
        )
    if config["mode"] not in MODES:
        raise ValueError(f"unknown mode {config['mode']!r}; write mode=ga+ppo, mode=ga or mode=sample")
    if int(config["steps"]) != 1:
        raise ValueError(
            f"smiles-optimize runs its whole oracle budget in one trainer step; drop --steps (got {config['steps']}) "
            "and set the budget instead: --set budget=2000"
        )
    load_reward(str(config["reward"]))


def optimize_data(config: dict[str, Any]) -> tuple[None, dict[str, Any]]:
    """No training data: check the config and copy the base run's vocabulary and architecture."""
    check_config(config)
    init = _init_dir(config)
    base = read_config(init)
    if base.get("source") != "uniform" or "vocab" not in base:
        raise ValueError(
            f"init_from={init} is a {base.get('recipe')!r} run; smiles-optimize needs a uniform-source token run "
            "(flowforge train smiles-uniform)"
        )
    from flowforge.data.molecules import require_rdkit

    require_rdkit("smiles-optimize")
    return None, {"base_recipe": base.get("recipe", ""), **{k: base[k] for k in _ARCH}}


def build_optimizer(config: dict[str, Any]) -> nn.Module:
    """The base flow (with the ``init_from`` run's EMA weights when that folder exists) in the wrapper."""
    check_config(config)
    flow = build_token_flow(config)
    init = Path(str(config.get("init_from") or "")).expanduser()
    if config.get("init_from") and (init / "config.json").is_file():
        from flowforge.train import Run

        Run(init).load_into(flow, ema=True)
    return MoleculeOptimization(flow, config)


def optimize_generator(model: nn.Module, config: dict[str, Any]) -> TokenGenerator:
    return TokenGenerator(model.flow.generator(), vocabulary(config))


def write_history(config: dict[str, Any], run_dir: Path):
    """The monitor hook: after the step, write ``RUN/optimization.json`` (atomically)."""

    def callback(step: int, trainer: Any) -> None:
        history = getattr(trainer.model, "history", None)
        if history is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (HISTORY_FILE + ".tmp")
        tmp.write_text(json.dumps(history.to_dict(), indent=1))
        os.replace(tmp, run_dir / HISTORY_FILE)

    return callback


def optimize_evaluate(
    model: nn.Module, config: dict[str, Any], data: Any, metrics: list[str], **_: Any
) -> dict:
    """The recorded optimisation's metrics (nothing is re-run or re-sampled)."""
    s = model.summary()
    return {m: s[m] for m in metrics}


register(
    Recipe(
        name="smiles-optimize",
        summary="optimise a smiles-uniform run for a molecule reward (InVirtuoGen GA + PPO; needs init_from=RUN)",
        defaults={
            "init_from": "",
            "reward": "qed",
            "mode": "ga+ppo",
            "budget": 2000,
            "population": 100,
            "offspring": 100,
            "mutations": 20,
            "ppo_batch": 100,
            "reinforce_steps": 5,
            "num_timesteps": 10,
            "rl_lr": 1e-5,
            "clip_eps": 0.2,
            "c_neg": 1.0,
            "minibatch": 256,
            "patience": 5,
            "sample_steps": 64,
            "temperature": 1.0,
            "corrector": 0.0,
            "steps": 1,
            "batch_size": 1,
            "lr": 1e-5,
            "warmup": 0,
            "ema_decay": 0.0,
            "threads": 1,
            "device": "cpu",
        },
        build=build_optimizer,
        data=optimize_data,
        generator=optimize_generator,
        sample_options=lambda config: ("steps", "temperature", "corrector"),
        sample_kwargs=_sample_kwargs,
        evaluate=optimize_evaluate,
        metrics=OPT_METRICS,
        default_metrics=OPT_METRICS,
        monitor=write_history,
        decode=lambda samples, config: vocabulary(config).decode(torch.as_tensor(samples)),
        kind="discrete",
    )
)
