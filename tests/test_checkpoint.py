"""Safetensors I/O and crash-safe checkpoints (flowforge.train.checkpoint)."""

from __future__ import annotations

import json
import os
import random
import struct

import numpy as np
import pytest
import torch
from torch import nn

from flowforge.train import checkpoint as ck
from flowforge.train.checkpoint import (
    CheckpointError,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_safetensors,
    safetensors_metadata,
    save_checkpoint,
    save_safetensors,
    unflatten_state,
)
from flowforge.train.trainer import Run


def all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-30, 65504.0])
    return {
        "f64": x,
        "f32": x.float(),
        "f16": x.half(),
        "bf16": x.bfloat16(),
        "bf16_special": special.bfloat16(),
        "f32_special": special,
        "i64": torch.tensor([-(2**63), 2**63 - 1, 0, 7]),
        "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 3], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "noncontig": torch.arange(12.0).reshape(3, 4).t(),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        # compare bit patterns, so -0.0 / inf are checked exactly
        assert torch.equal(
            a[k].contiguous().view(-1).view(torch.uint8), b[k].contiguous().view(-1).view(torch.uint8)
        ), k


def test_round_trip_all_dtypes(tmp_path):
    tensors = all_dtypes()
    nan = torch.tensor([float("nan"), 1.0])
    tensors["nan"] = nan
    save_safetensors(tmp_path / "a.safetensors", tensors, metadata={"who": "me", "n": "3"})
    back = load_safetensors(tmp_path / "a.safetensors")
    assert_same(tensors, back)
    assert safetensors_metadata(tmp_path / "a.safetensors") == {"who": "me", "n": "3"}
    # layout: 8-byte little-endian header length, header padded to 8 bytes, data exactly after it
    raw = (tmp_path / "a.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["f32"]["dtype"] == "F32" and header["bf16"]["dtype"] == "BF16"
    b, e = header["f32"]["data_offsets"]
    assert raw[8 + n + b : 8 + n + e] == tensors["f32"].numpy().astype("<f4").tobytes()
    # no temp files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_unsupported_inputs_are_rejected_with_advice(tmp_path):
    with pytest.raises(TypeError, match="'c' has dtype torch.complex32.*cast it"):
        save_safetensors(tmp_path / "x.safetensors", {"c": torch.zeros(2, dtype=torch.complex32)})
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        save_safetensors(tmp_path / "x.safetensors", {"c": [1, 2]})
    with pytest.raises(TypeError, match="metadata must map str to str"):
        save_safetensors(tmp_path / "x.safetensors", {"c": torch.zeros(1)}, metadata={"a": 1})
    assert not (tmp_path / "x.safetensors").exists()


def test_files_are_the_safetensors_package_s(tmp_path):
    """Written and read by the safetensors package: each side reads the other's files."""
    import safetensors.torch as st

    tensors = {k: v.contiguous() for k, v in all_dtypes().items()}
    save_safetensors(tmp_path / "ours.safetensors", tensors, metadata={"format": "pt"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert_same(tensors, theirs)
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    assert_same(tensors, load_safetensors(tmp_path / "theirs.safetensors"))
    assert safetensors_metadata(tmp_path / "theirs.safetensors") == {"k": "v"}
    # tensors sharing memory (tied weights) are stored as independent copies
    w = torch.randn(3, 2)
    save_safetensors(tmp_path / "tied.safetensors", {"a": w, "b": w, "c": w[1]})
    back = load_safetensors(tmp_path / "tied.safetensors")
    assert torch.equal(back["a"], w) and torch.equal(back["b"], w) and torch.equal(back["c"], w[1])


def _write_raw(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown variant `F99`"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "invalid shape, data type",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "invalid offset"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 2, "not fully covered"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "not fully covered"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "integer `-1`"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "missing field `data_offsets`"),
        ({"__metadata__": {"a": 1}}, b"", "expected a string"),
    ],
)
def test_malformed_safetensors_raise(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(CheckpointError, match=match) as info:
        load_safetensors(path)
    assert "bad.safetensors has a bad header" in str(info.value) and "restore it" in str(info.value)


def test_garbage_and_missing_safetensors(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"xx")
    with pytest.raises(CheckpointError, match="header too large"):
        load_safetensors(tmp_path / "g.safetensors")
    (tmp_path / "j.safetensors").write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(CheckpointError, match="invalid JSON in header"):
        load_safetensors(tmp_path / "j.safetensors")
    (tmp_path / "s.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="header too small"):
        load_safetensors(tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_safetensors(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------------------------------
# checkpoint folders


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def save_model_ckpt(root, model: nn.Module, step: int, keep: int = 3):
    sd = model.state_dict()
    return save_checkpoint(root, {"model": sd, "ema": sd}, {"note": f"step {step}"}, step=step, keep=keep)


def test_checkpoint_round_trip_latest_and_keep(tmp_path):
    for step in (1, 2, 3, 4, 5):
        path = save_model_ckpt(tmp_path, small_model(step), step, keep=2)
        assert path.name == f"ckpt-{step:06d}"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000004", "ckpt-000005"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-000005"
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 5 and ckpt.config == {"note": "step 5"}
    for k, v in small_model(5).state_dict().items():
        assert torch.equal(ckpt.tensors["model"][k], v)
    manifest = json.loads((tmp_path / "ckpt-000005" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "ema.safetensors"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    # a single group, from an explicit folder
    only = load_checkpoint(tmp_path / "ckpt-000004", groups=["ema"])
    assert list(only.tensors) == ["ema"] and only.step == 4
    # leftovers: only complete folders and the pointer remain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000004", "ckpt-000005", "latest"]
    # re-saving an existing step replaces it
    save_model_ckpt(tmp_path, small_model(9), 5, keep=2)
    assert torch.equal(load_checkpoint(tmp_path).tensors["model"]["0.weight"], small_model(9)[0].weight)


def test_no_checkpoint_message(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)


def _corrupt(kind: str, ckpt_dir) -> str:
    f = ckpt_dir / "ema.safetensors"
    raw = bytearray(f.read_bytes())
    if kind == "truncate":
        f.write_bytes(raw[:100])
        return "is truncated (expected"
    if kind == "flip":
        raw[-3] ^= 0x10
        f.write_bytes(bytes(raw))
        return "is corrupted (its sha256"
    if kind == "header":
        i = raw.index(b'"F32"')
        raw[i : i + 5] = b'"F31"'
        f.write_bytes(bytes(raw))
        return "has a bad header (the safetensors package says: invalid JSON in header: unknown variant `F31`"
    if kind == "missing":
        f.unlink()
        return "ema.safetensors is missing"
    if kind == "manifest":
        (ckpt_dir / "manifest.json").write_text("{not json")
        return "manifest.json is not valid JSON"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncate", "flip", "header", "missing", "manifest"])
def test_corruption_raises_helpful_error_and_leaves_model_untouched(tmp_path, kind):
    save_model_ckpt(tmp_path, small_model(1), 100)
    save_model_ckpt(tmp_path, small_model(2), 200)
    expect = _corrupt(kind, tmp_path / "ckpt-000200")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    msg = str(info.value)
    assert expect in msg
    assert "ckpt-000200/" in msg and "fall back to ckpt-000100" in msg

    model = small_model(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        Run(tmp_path).load_into(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # following the advice works
    import shutil

    shutil.rmtree(tmp_path / "ckpt-000200")
    Run(tmp_path).load_into(model)
    assert torch.equal(model[0].weight, small_model(1)[0].weight)


def test_only_checkpoint_corrupted_says_no_fallback(tmp_path):
    save_model_ckpt(tmp_path, small_model(1), 100)
    _corrupt("truncate", tmp_path / "ckpt-000100")
    with pytest.raises(CheckpointError, match="no older checkpoint is left"):
        load_checkpoint(tmp_path)


def test_wrong_architecture_never_half_loads(tmp_path):
    save_model_ckpt(tmp_path, small_model(1), 1)
    other = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Run(tmp_path).load_into(other)
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k])  # the matching first layer was not copied either


class _Crash(BaseException):
    """Stands in for a kill: not an Exception, so no `except Exception` handler swallows it."""


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    real_replace = os.replace
    calls = {"n": 0}

    def counting(a, b):
        calls["n"] += 1
        real_replace(a, b)

    save_model_ckpt(tmp_path / "probe", small_model(1), 1)
    monkeypatch.setattr(ck.os, "replace", counting)
    save_model_ckpt(tmp_path / "probe", small_model(2), 2, keep=1)
    n_calls = calls["n"]  # files, manifest, folder rename, latest pointer, prune
    assert n_calls >= 5

    for k in range(n_calls):
        root = tmp_path / f"run{k}"
        monkeypatch.setattr(ck.os, "replace", real_replace)
        save_model_ckpt(root, small_model(1), 1, keep=1)
        calls["n"] = 0

        def failing(a, b, k=k):
            if calls["n"] == k:
                raise _Crash()
            calls["n"] += 1
            real_replace(a, b)

        monkeypatch.setattr(ck.os, "replace", failing)
        with pytest.raises(_Crash):
            save_model_ckpt(root, small_model(2), 2, keep=1)
        monkeypatch.setattr(ck.os, "replace", real_replace)
        ckpt = load_checkpoint(root)  # whole and valid: the old one or the new one
        assert ckpt.step in (1, 2)
        want = small_model(ckpt.step)[0].weight
        assert torch.equal(ckpt.tensors["model"]["0.weight"], want)
        if k <= 4:  # up to the folder rename (3) and the `latest` pointer (4): the previous one loads
            assert ckpt.step == 1
        # and the next save cleans up and succeeds
        save_model_ckpt(root, small_model(3), 3, keep=1)
        assert load_checkpoint(root).step == 3
        assert sorted(p.name for p in root.iterdir()) == ["ckpt-000003", "latest"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a saving process")
@pytest.mark.parametrize("kill_at", [1, 3, 4, 5])
def test_killed_process_mid_save_leaves_previous_checkpoint(tmp_path, kill_at):
    save_model_ckpt(tmp_path, small_model(1), 1, keep=1)
    pid = os.fork()
    if pid == 0:  # child: die hard (no cleanup, no finally) at the kill_at-th os.replace
        code = 3
        try:
            n = {"i": 0}
            real = os.replace

            def dying(a, b):
                n["i"] += 1
                if n["i"] == kill_at:
                    os._exit(9)
                real(a, b)

            ck.os.replace = dying
            save_model_ckpt(tmp_path, small_model(2), 2, keep=1)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 1
    assert torch.equal(ckpt.tensors["model"]["0.weight"], small_model(1)[0].weight)
    assert latest_checkpoint(tmp_path).name == "ckpt-000001"


def test_flatten_state_round_trips_optimizer_and_rng_states():
    model = small_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "opt": opt.state_dict(),
        "np": np.random.get_state(),
        "py": random.getstate(),
        "torch": torch.get_rng_state(),
        "nested": {1: (2.5, None, "s"), "__odd": [True]},
    }
    js, tensors = flatten_state(state)
    json.dumps(js)  # plain JSON
    back = unflatten_state(json.loads(json.dumps(js)), tensors)
    assert back["opt"]["param_groups"] == state["opt"]["param_groups"]
    for i, s in state["opt"]["state"].items():
        for k, v in s.items():
            assert torch.equal(back["opt"]["state"][i][k], v)
    assert back["np"][0] == "MT19937" and back["np"][1].dtype == np.uint32
    assert np.array_equal(back["np"][1], state["np"][1]) and back["np"][2:] == state["np"][2:]
    assert back["py"] == state["py"]
    assert back["nested"] == state["nested"]
    with pytest.raises(TypeError, match="never pickles"):
        flatten_state({"f": lambda: 0})
