"""The layout of ``flowforge.gflownet``: one method a file, found from the package docstring's table;
objectives declare ``key`` / ``options``; environments satisfy the contract; resume is bit-identical."""

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

import flowforge
import flowforge.gflownet as gfn
import flowforge.gflownet.envs as gfn_envs
from flowforge.core.contracts import (
    Environment,
    HasFastLogReward,
    HasForwardForbidden,
    HasStepDelta,
)
from flowforge.train import train

ROOT = Path(flowforge.__file__).parent
ROW = re.compile(r"^:(?:class|func):`(\w+)`\s+``([\w/]+\.py)``\s*$")


def _defined_in(obj: object) -> Path:
    return Path(sys.modules[obj.__module__].__file__).resolve()


def _table(doc: str) -> dict[str, str]:
    return {m[1]: m[2] for line in doc.splitlines() if (m := ROW.match(line.strip()))}


def _exported_classes() -> dict[str, type]:
    return {n: getattr(gfn, n) for n in gfn.__all__ if inspect.isclass(getattr(gfn, n))}


def test_init_table_names_the_defining_file_of_every_exported_class():
    table = _table(gfn.__doc__)
    assert len(table) >= 20
    for name, rel in table.items():
        assert (ROOT / rel).is_file(), f"the table names {rel} for {name}, which does not exist"
        obj = getattr(gfn, name)
        assert _defined_in(obj) == (ROOT / rel).resolve(), f"{name} is not defined in {rel}"
    missing = sorted(set(_exported_classes()) - set(table))
    assert not missing, f"exported classes missing from the flowforge.gflownet docstring table: {missing}"


def test_envs_table_names_the_defining_file():
    table = _table(gfn_envs.__doc__)
    assert table
    for name, rel in table.items():
        path = ROOT / "gflownet" / rel
        assert _defined_in(getattr(gfn_envs, name)) == path.resolve(), f"{name} is not defined in {rel}"


def _objectives() -> list[type]:
    bases = {gfn.GFlowNet, gfn.StateFlowGFlowNet}
    out = [c for c in _exported_classes().values() if issubclass(c, gfn.GFlowNet) and c not in bases]
    return out + [gfn.OutcomeConditionedGFlowNet, gfn.AmortizedConversion, gfn.OutcomeFineTuning]


def _init_keywords(cls: type) -> set[str]:
    names: set[str] = set()
    for c in cls.__mro__:
        if "__init__" in vars(c):
            names |= set(inspect.signature(c.__init__).parameters)
    return names


def test_every_objective_declares_key_options_and_makes_own_batches():
    objs = _objectives()
    assert {gfn.TrajectoryBalance, gfn.DetailedBalance, gfn.SubTrajectoryBalance}.issubset(objs)
    keys = []
    for cls in objs:
        assert "key" in vars(cls), f"{cls.__name__} must define its own key (not inherit one)"
        assert isinstance(cls.key, str) and cls.key, cls
        assert "options" in vars(cls) and isinstance(cls.options, tuple), cls
        unknown = [o for o in cls.options if o not in _init_keywords(cls)]
        assert not unknown, f"{cls.__name__}.options names {unknown}, which its constructor does not take"
        assert cls.makes_own_batches is True, cls
        keys.append(cls.key)
    assert len(set(keys)) == len(keys), f"duplicate objective keys: {keys}"
    assert gfn.TrajectoryBalance.options == ("log_z_lr_scale",)
    assert gfn.SubTrajectoryBalance.options == ("lamda", "incomplete")
    assert gfn.GFlowNet.makes_own_batches is True


ENVS = {
    gfn.HyperGrid: lambda: gfn.HyperGrid(2, 4),
    gfn.BitSequence: lambda: gfn.BitSequence(4, 2),
    gfn.NonAutoregressiveBitSequence: lambda: gfn.NonAutoregressiveBitSequence(4, 2),
    gfn.SetGeneration: lambda: gfn.SetGeneration(6, 3),
    gfn.Ising: lambda: gfn.Ising(side=2),
    gfn.MultiObjectiveHyperGrid: lambda: gfn.MultiObjectiveHyperGrid(2, 4),
}


def test_every_environment_satisfies_the_contract():
    in_envs = {
        getattr(gfn_envs, n)
        for n in gfn_envs.__all__
        if inspect.isclass(getattr(gfn_envs, n)) and hasattr(getattr(gfn_envs, n), "forward_mask")
    }
    assert in_envs - {Environment} == set(ENVS), (
        "every environment of flowforge.gflownet.envs must be listed in ENVS"
    )
    for cls, make in ENVS.items():
        env = make()
        assert isinstance(env, Environment), cls.__name__
        for hook in ("_step_delta", "_forward_forbidden", "_log_reward_fast"):
            assert not hasattr(env, hook), f"{cls.__name__}.{hook} is private; the hooks are public now"
    assert isinstance(gfn.HyperGrid(2, 4), HasStepDelta | HasForwardForbidden | HasFastLogReward)
    assert not isinstance(gfn.BitSequence(4, 2), HasStepDelta)


def _tb_with_replay() -> gfn.TrajectoryBalance:
    torch.manual_seed(0)
    buf = gfn.PrioritizedReplayBuffer(capacity=12, k=0.1)
    return gfn.TrajectoryBalance(gfn.HyperGrid(2, 6), width=16, depth=1, replay_buffer=buf, replay_ratio=0.5)


class _Killed(Exception):
    pass


def test_resume_with_prioritized_replay_is_bit_identical(tmp_path):
    steps, k = 12, 5
    opts = dict(steps=steps, ckpt_every=k, batch_size=8, lr=1e-2, progress=False, log_every=4)
    a = _tb_with_replay()
    train(a, a.env, out=tmp_path / "a", **opts)

    def kill(step, trainer):
        if step == k:
            raise _Killed

    b = _tb_with_replay()
    with pytest.raises(_Killed):
        train(b, b.env, out=tmp_path / "b", callback=kill, **opts)
    c = _tb_with_replay()  # a fresh model: the replay buffer comes back from the checkpoint
    assert len(c.replay_buffer) == 0
    train(c, c.env, out=tmp_path / "b", resume=True, **opts)
    sa, sc = a.state_dict(), c.state_dict()
    assert sa.keys() == sc.keys() and "replay_buffer.stored_states" in sa
    assert len(c.replay_buffer) == len(a.replay_buffer) > 0
    for key in sa:
        assert torch.equal(sa[key], sc[key]), key


def test_replay_buffer_loads_strictly_into_a_fresh_model():
    a = _tb_with_replay()
    a.replay_buffer.add(torch.tensor([[1, 2], [3, 4]]), torch.tensor([0.5, 1.5]))
    b = _tb_with_replay()
    b.load_state_dict(a.state_dict(), strict=True)
    assert b.replay_buffer.states.tolist() == [[3, 4], [1, 2]]
    assert b.replay_buffer.log_rewards.dtype == torch.float64
    assert b.float().replay_buffer.log_rewards.dtype == torch.float64  # .float() keeps the log-rewards exact
