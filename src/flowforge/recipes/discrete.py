"""Token flows: ``expr-uniform``, ``expr-masked``, ``tokens-uniform``, ``tokens-masked``, ``smiles-uniform``,
``smiles-masked``, ``selfies-uniform``, ``selfies-masked``, ``moses-uniform``.

Discrete flow matching (Gat et al., 2024) on fixed-length token sequences padded with ``<pad>`` (id 0),
which the model generates like any token. The source is uniform over the vocabulary (InVirtuoGen) or
all-mask (masked DFM); both train by cross-entropy on all positions (InVirtuoGen's "refinement, not
completion"; ``--set loss=ce_masked|gkl`` for the others) with a non-causal
:class:`~flowforge.nn.TokenTransformer`, and sample by CTMC Euler steps whose count does not depend on the
length (``flowforge sample RUN --steps 64 --temperature 1 --corrector 0 --out FILE.txt``).

Data: ``expr`` (arithmetic expressions the package generates; a strict parser checks validity; needs no
file), a user's ``--data FILE.txt`` (one sequence a line, characters as tokens) or ``FILE.smi``
(``tokens-*``; without ``--data`` they train on ``expr``), RDKit's bundled ``NCI/first_5K.smi``
(``smiles-*`` as SMILES tokens; ``selfies-*`` as SELFIES tokens, decoded back to canonical SMILES, so every
sample but the empty one is a valid molecule; ``pip install 'flowforge[molecules]'``) and MOSES (``moses-uniform``, ``pip install
--no-deps molsets``). The vocabulary is saved in the run's config. ``eval`` metrics: ``validity``,
``uniqueness``, ``novelty`` (against the training split), ``bpt`` (ELBO bits per token of held-out
sequences, an upper bound), and for molecules ``internal_diversity``, ``qed``, ``sa``, ``fcd``.

Example:
    >>> from flowforge.recipes import get_recipe
    >>> r = get_recipe("expr-uniform")
    >>> r.sample_options(dict(r.defaults)), r.defaults["source"]
    (('steps', 'temperature', 'corrector'), 'uniform')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowforge.core.choices import unknown_choice
from flowforge.core.schedules import Linear, Polynomial
from flowforge.data.tokens import (
    TOKENIZERS,
    Vocabulary,
    bracket_words,
    expressions,
    is_balanced,
    is_valid_expression,
    load_sequences,
)
from flowforge.discrete import DiscreteFlowMatching, DiscreteGenerator
from flowforge.nn import TokenTransformer
from flowforge.recipes.registry import Recipe, register

#: the data sets a token recipe trains on (``dataset`` key)
DATASETS = ("expr", "brackets", "file", "nci", "moses")
#: every metric of a token run (which apply depends on the data: see :func:`token_metrics`)
TOKEN_METRICS = ("validity", "uniqueness", "novelty", "bpt", "internal_diversity", "qed", "sa", "fcd")
_MOLECULE_ONLY = ("internal_diversity", "qed", "sa", "fcd")
_SAMPLE_OPTIONS = ("steps", "temperature", "corrector")


def _split(strings: list[str], n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """A fixed shuffle of ``strings`` into ``(train, test)`` with ``n_test`` (at least 1) held out."""
    if len(strings) < 2:
        raise ValueError(f"need at least 2 sequences to hold one out for evaluation, got {len(strings)}")
    order = torch.randperm(len(strings), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, min(n_test, len(strings) // 10 or 1))
    return [strings[i] for i in order[n_test:]], [strings[i] for i in order[:n_test]]


def corpus(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The run's ``(train, test)`` strings; the same config gives the same split (no RNG of the run).

    With ``tokenizer=selfies`` the molecules SELFIES cannot encode are dropped from both splits (a warning
    counts them); the other tokenisers raise on a string they cannot split.
    """
    train, test = _corpus(config)
    if config.get("tokenizer") != "selfies":
        return train, test
    tok = TOKENIZERS["selfies"]()

    def ok(s: str) -> bool:
        try:
            tok.split(s)
        except ValueError:
            return False
        return True

    kept = [s for s in train if ok(s)], [s for s in test if ok(s)]
    dropped = len(train) + len(test) - len(kept[0]) - len(kept[1])
    if dropped:
        warnings.warn(f"dropped {dropped} molecules that SELFIES cannot encode", stacklevel=2)
    return kept


def _corpus(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    name, n_train, n_test = config["dataset"], int(config["n_train"]), int(config["n_test"])
    seed = int(config.get("data_seed", 0))
    if name == "file" and not config.get("data_file"):
        name = "expr"  # tokens-* without --data: the embedded grammar
    if name == "expr":
        s = expressions(n_train + n_test, max_length=int(config["max_length"]), seed=seed)
        return s[:n_train], s[n_train:]
    if name == "brackets":
        s = bracket_words(n_train + n_test, max_length=int(config["max_length"]), seed=seed)
        return s[:n_train], s[n_train:]
    if name == "file":
        return _split(load_sequences(config["data_file"]), n_test, seed)
    if name == "nci":
        from flowforge.data.molecules import nci_5k

        return _split(nci_5k(), n_test, seed)
    if name == "moses":
        from flowforge.data.molecules import moses

        train = moses("train")
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_train]
        return [train[i] for i in idx.tolist()], moses("test")[:n_test]
    raise unknown_choice("dataset", name, DATASETS)


def vocabulary(config: dict[str, Any]) -> Vocabulary:
    """The run's vocabulary (saved in its config by :func:`token_data`)."""
    return Vocabulary.from_dict(config["vocab"])


def token_data(config: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Training tokens ``(N, L)`` int64 and the config updates: vocabulary, length, split sizes."""
    if config["tokenizer"] not in TOKENIZERS:
        raise unknown_choice("tokenizer", config["tokenizer"], tuple(TOKENIZERS))
    train, test = corpus(config)
    vocab = Vocabulary.build(train + test, TOKENIZERS[config["tokenizer"]]())
    longest = max(vocab.lengths(train))
    length = int(config["length"]) or min(longest, int(config["max_length"]))
    x = vocab.encode(train, length, too_long="drop")
    return x, {"vocab": vocab.to_dict(), "length": length, "n_train": len(x), "vocab_size": len(vocab)}


def build_token_flow(config: dict[str, Any]) -> nn.Module:
    """:class:`~flowforge.discrete.DiscreteFlowMatching` around a :class:`~flowforge.nn.TokenTransformer`."""
    v, length = int(config["vocab_size"]), int(config["length"])
    net = TokenTransformer(
        v, length, width=int(config["width"]), depth=int(config["depth"]), heads=int(config["heads"])
    )
    power = float(config["kappa_power"])
    if power <= 0:
        raise ValueError(f"kappa_power must be > 0 (kappa(t) = t^power), got {power}; e.g. 1 (linear)")
    schedule = Linear() if power == 1.0 else Polynomial(power)
    return DiscreteFlowMatching(
        net, v, source=config["source"], schedule=schedule, loss=config["loss"], length=length
    )


class TokenGenerator:
    """A token run as a generator: ``sample`` gives ids ``(n, L)``, ``decode`` their strings."""

    def __init__(self, inner: DiscreteGenerator, vocab: Vocabulary) -> None:
        self.inner, self.vocab = inner, vocab

    def sample(self, n: int, **opts: Any) -> Tensor:
        """``(n, L)`` int64 token ids (``opts``: steps, temperature, corrector, generator, ...)."""
        with torch.no_grad():
            return self.inner.sample(n, **opts)

    def log_prob(self, x: Tensor, **opts: Any) -> Tensor:
        """The ELBO of ids ``(B, L)``, nats ``(B,)`` (a lower bound on log p)."""
        return self.inner.log_prob(x, **opts)

    def decode(self, x: Tensor) -> list[str]:
        """Strings of ids ``(n, L)`` (up to the first ``<pad>``)."""
        return self.vocab.decode(x)


def token_generator(model: nn.Module, config: dict[str, Any]) -> TokenGenerator:
    return TokenGenerator(model.generator(), vocabulary(config))


def _sample_kwargs(config: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
    out = {
        "steps": int(given.get("steps", config["sample_steps"])),
        "temperature": float(given.get("temperature", config["temperature"])),
        "corrector": float(given.get("corrector", config["corrector"])),
    }
    if out["temperature"] <= 0:
        raise ValueError(
            f"--temperature must be > 0, got {out['temperature']}; 1 samples the model as trained"
        )
    if out["corrector"] < 0:
        raise ValueError(f"--corrector must be >= 0, got {out['corrector']}; 0 is no corrector")
    return out


def decode_samples(samples: Any, config: dict[str, Any]) -> list[str]:
    """The ``decode`` hook: ids ``(n, L)`` to strings with the run's vocabulary."""
    return vocabulary(config).decode(torch.as_tensor(samples))


def load_token_file(path: str, config: dict[str, Any]) -> Tensor:
    """``eval --data FILE.txt|.smi``: sequences encoded with the run's vocabulary ``(N, L)``."""
    return vocabulary(config).encode(load_sequences(path), int(config["length"]), too_long="drop")


def token_reference(config: dict[str, Any], n: int, seed: int) -> Tensor:
    """The held-out split, encoded ``(N, L)`` (``n`` and ``seed`` do not change a fixed split)."""
    return vocabulary(config).encode(corpus(config)[1], int(config["length"]), too_long="drop")


def _is_molecules(config: dict[str, Any]) -> bool:
    return config["dataset"] in ("nci", "moses") or (
        config["dataset"] == "file" and str(config.get("data_file", "")).endswith(".smi")
    )


def _validity_check(config: dict[str, Any]) -> Callable[[str], bool] | None:
    name = config["dataset"] if config.get("data_file") or config["dataset"] != "file" else "expr"
    return {"expr": is_valid_expression, "brackets": is_balanced}.get(name)


def token_metrics(
    samples: list[str], train: list[str], test: list[str], config: dict[str, Any], metrics: list[str]
) -> dict[str, Any]:
    """Sample metrics of decoded strings: grammar validity or RDKit's for molecules (a user's text file
    has no validity check: ``validity`` is None there)."""
    wanted = [m for m in metrics if m != "bpt"]
    if not wanted:
        return {}
    if _is_molecules(config):
        from flowforge.metrics.molecules import molecule_metrics

        return molecule_metrics(samples, train, test, wanted)
    bad = [m for m in wanted if m in _MOLECULE_ONLY]
    if bad:
        raise ValueError(f"{', '.join(bad)} need molecules (smiles-* or moses-* runs, or --data FILE.smi)")
    check = _validity_check(config)
    from flowforge.metrics.sequences import sequence_metrics

    res: dict[str, Any] = sequence_metrics(samples, train, check or (lambda s: True))
    if check is None:  # a user's text file: no notion of validity
        res["validity"] = None
    return {m: res[m] for m in wanted}


def _evaluate(
    model: nn.Module,
    config: dict[str, Any],
    data: Callable[[], Tensor],
    metrics: list[str],
    *,
    n: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``n`` samples' metrics against the training split, and ``bpt`` of the held-out data."""
    gen = token_generator(model, config)
    n = int(n or config["eval_n"])
    kwargs = _sample_kwargs(config, options, n)
    out: dict[str, Any] = {}
    if any(m != "bpt" for m in metrics):
        x = gen.sample(n, generator=torch.Generator().manual_seed(seed), **kwargs)
        train, test = corpus(config)
        out.update(token_metrics(gen.decode(x), train, test, config, metrics))
    if "bpt" in metrics:
        held = data()[: int(config["bpt_n"])]
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            elbo = torch.cat(
                [gen.log_prob(c, steps=int(config["bpt_steps"]), generator=g) for c in held.split(250)]
            )
        out["bpt"] = float(-elbo.mean() / (held.shape[1] * torch.log(torch.tensor(2.0))))
        out["bpt_n"] = len(held)
    return {**out, "n": n, **kwargs, "nfe": kwargs["steps"]}


_DEFAULTS: dict[str, Any] = {
    "dataset": "expr",
    "data_file": "",
    "tokenizer": "char",
    "n_train": 20_000,
    "n_test": 2_000,
    "data_seed": 0,
    "max_length": 24,
    "length": 0,  # 0: the longest training sequence, at most max_length (longer ones are dropped)
    "source": "uniform",
    "loss": "ce",
    "kappa_power": 1.0,
    "width": 128,
    "depth": 4,
    "heads": 4,
    "steps": 3000,
    "batch_size": 128,
    "lr": 3e-4,
    "warmup": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "threads": 1,
    "device": "",
    "sample_steps": 64,
    "temperature": 1.0,
    "corrector": 0.0,
    "eval_n": 1000,
    "bpt_n": 1000,
    "bpt_steps": 32,
}
_SETS: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    "expr": (
        {},
        ("uniform", "masked"),
        "arithmetic expressions the package generates (validity by a parser)",
    ),
    "tokens": (
        {"dataset": "file"},
        ("uniform", "masked"),
        "your sequences: --data FILE.txt (one a line, characters as tokens) or FILE.smi",
    ),
    "smiles": (
        {"dataset": "nci", "tokenizer": "smiles", "max_length": 64, "n_test": 500, "eval_n": 1000},
        ("uniform", "masked"),
        "RDKit's NCI first 5K molecules as SMILES tokens (needs flowforge[molecules])",
    ),
    "selfies": (
        {"dataset": "nci", "tokenizer": "selfies", "max_length": 64, "n_test": 500, "eval_n": 1000},
        ("uniform", "masked"),
        "RDKit's NCI first 5K molecules as SELFIES tokens, sampled as SMILES (needs flowforge[molecules])",
    ),
    "moses": (
        {"dataset": "moses", "tokenizer": "smiles", "max_length": 64, "n_train": 200_000, "n_test": 10_000},
        ("uniform",),
        "MOSES train/test molecules (needs flowforge[molecules] and pip install --no-deps molsets)",
    ),
}

for _set, (_extra, _sources, _about) in _SETS.items():
    for _source in _sources:
        register(
            Recipe(
                name=f"{_set}-{_source}",
                summary=f"discrete flow, {_source} source: {_about}",
                defaults={**_DEFAULTS, **_extra, "source": "mask" if _source == "masked" else "uniform"},
                build=build_token_flow,
                data=token_data,
                generator=token_generator,
                sample_options=lambda config: _SAMPLE_OPTIONS,
                sample_kwargs=_sample_kwargs,
                eval_options=lambda config: ("data", "n", *_SAMPLE_OPTIONS),
                reference=token_reference,
                load_data=load_token_file,
                evaluate=_evaluate,
                metrics=TOKEN_METRICS,
                default_metrics=lambda options: ("validity", "uniqueness", "novelty", "bpt"),
                decode=decode_samples,
                kind="discrete",
            )
        )
