"""Causal video flows (STARFlow-V on toy sprites): VideoTARFlow, the flow-score denoiser, data, FD, recipe."""

from __future__ import annotations

import pytest
import torch

from flowforge.apps.video import frame_fd, moving_sprites, pair_fd, sprite_trajectories
from flowforge.normalizing import FlowScoreDenoiser, VideoTARFlow

F64 = torch.float64


def _tiny(frame_shape=(1, 4, 4), frames=3, **kw) -> VideoTARFlow:
    """A tiny float64 flow whose zero-initialised output projections are randomised (a non-trivial map)."""
    torch.manual_seed(0)
    opts = dict(patch=2, blocks=2, width=16, layers=1, deep_layers=2, head_dim=8)
    if len(frame_shape) == 1:
        opts.update(patch=1, token_dim=2)
    flow = VideoTARFlow(frames, frame_shape, **{**opts, **kw}).to(F64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.3, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
    return flow


@pytest.mark.parametrize("frame_shape", [(1, 4, 4), (4,)])
def test_exact_inverse_and_log_det_against_the_autograd_jacobian(frame_shape):
    flow = _tiny(frame_shape)
    x = torch.randn(3, 3, *frame_shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    z, ladj = flow(x)
    for method in ("sequential", "jacobi"):
        xr, ladj_inv = flow.inverse(z, method=method, jacobi_tol=0.0)
        assert (xr - x).abs().max() < 1e-10
        assert (ladj + ladj_inv).abs().max() < 1e-10
    d = x[0].numel()
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow(v.view(1, *x.shape[1:]))[0].reshape(-1), x[i].reshape(-1)
        )
        assert jac.shape == (d, d)
        assert torch.allclose(torch.linalg.slogdet(jac)[1], ladj[i], atol=1e-9)


def test_frame_k_never_changes_the_outputs_of_earlier_frames():
    flow = _tiny()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 1, 4, 4, dtype=F64, generator=g)
    z = flow(x)[0]
    for k in range(3):
        x2 = x.clone()
        x2[:, k] += torch.randn(x2[:, k].shape, dtype=F64, generator=g)
        z2 = flow(x2)[0]
        assert torch.equal(z2[:, :k], z[:, :k])  # data to noise: frames < k untouched
        assert (z2[:, k] - z[:, k]).abs().max() > 1e-3  # and frame k does move
        for method in ("sequential", "jacobi") if k else ():  # noise to data: causal as well
            xa, xb = flow.inverse(z, method=method)[0], flow.inverse(z2, method=method)[0]
            assert (xa[:, :k] - xb[:, :k]).abs().max() < 1e-12
    # the learned denoiser is causal over frames too
    den = FlowScoreDenoiser(3, (1, 4, 4), 16, 1, head_dim=8, sigma=0.1).to(F64)
    torch.nn.init.normal_(den.out.weight, std=0.3)
    x2 = x.clone()
    x2[:, 2] += 1.0
    assert torch.equal(den(x2)[:, :2], den(x)[:, :2]) and not torch.equal(den(x2)[:, 2], den(x)[:, 2])


@pytest.mark.parametrize("jacobi_frames", [None, 1, 2])
def test_jacobi_across_frames_equals_sequential_decoding(jacobi_frames):
    flow = _tiny(frames=4)
    z = torch.randn(5, 4, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    seq_stats, jac_stats = {}, {}
    xs, ls = flow.inverse(z, method="sequential", stats=seq_stats)
    xj, lj = flow.inverse(z, method="jacobi", jacobi_frames=jacobi_frames, stats=jac_stats)
    assert (xs - xj).abs().max() < 1e-6 and (ls - lj).abs().max() < 1e-6
    # sequential: one call a token (4 frames x 4 tokens deep, 4 tokens a shallow block); Jacobi never more
    assert seq_stats["transformer_calls"] == 16 + 2 * 4
    assert jac_stats["transformer_calls"] <= seq_stats["transformer_calls"]


def test_untrained_flow_is_the_identity_and_tweedie_uses_its_gaussian_score():
    flow = VideoTARFlow(3, (1, 4, 4), patch=2, blocks=1, width=16, head_dim=8, noise_std=0.2).to(F64)
    x = torch.randn(4, 3, 1, 4, 4, dtype=F64)
    z, ladj = flow(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(4, dtype=F64))
    # log p = standard normal, score -x: Tweedie gives (1 - sigma^2) x
    assert torch.allclose(flow.apply_denoiser(x, "tweedie"), (1 - 0.04) * x, atol=1e-12)
    assert torch.equal(flow.apply_denoiser(x, "none"), x)


def test_flow_score_matching_trains_the_denoiser_only_and_regresses_sigma_times_the_score():
    kw = dict(patch=2, blocks=1, width=16, head_dim=8, noise_std=0.2)
    a = VideoTARFlow(3, (1, 4, 4), **kw, denoiser_width=16, denoiser_layers=1).to(F64)
    b = VideoTARFlow(3, (1, 4, 4), **kw).to(F64)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("denoiser.")})
    with torch.no_grad():  # a non-zero denoiser output, so its loss term is not trivially zero
        a.denoiser.out.weight.normal_(0, 0.1)
    x = torch.randn(6, 3, 1, 4, 4, dtype=F64)
    torch.manual_seed(5)
    a.loss(x).backward()
    torch.manual_seed(5)
    b.loss(x).backward()
    for (name, pa), pb in zip(a.transform.named_parameters(), b.transform.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-12), name  # the FSM target is detached
    assert a.denoiser.out.weight.grad.abs().max() > 0
    # the identity flow has score -x, so the target of D is -sigma * x~; a fitted D undoes most noise
    den = a.denoiser
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(6)
    for _ in range(150):
        xn = torch.randn(64, 3, 1, 4, 4, dtype=F64, generator=g)
        loss = den.loss(xn, 0.2 * a.score(xn))
        opt.zero_grad()
        loss.backward()
        opt.step()
    xn = torch.randn(256, 3, 1, 4, 4, dtype=F64, generator=g)
    assert den.loss(xn, -0.2 * xn) < 0.05 * (0.2 * xn).square().mean()
    assert torch.allclose(a.apply_denoiser(xn, "learned"), xn + 0.2 * den(xn))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by patch"):
        VideoTARFlow(3, (1, 5, 5), patch=2)
    with pytest.raises(ValueError, match="noise_std > 0"):
        VideoTARFlow(3, (1, 4, 4), patch=2, denoiser_width=8)
    flow = VideoTARFlow(3, (1, 4, 4), patch=2, blocks=1, width=16, head_dim=8)
    with pytest.raises(ValueError, match="jacobi_frames must be in 1..3"):
        flow.sample(1, method="jacobi", jacobi_frames=4)
    with pytest.raises(ValueError, match="denoise"):
        flow.apply_denoiser(torch.zeros(1, 3, 1, 4, 4), "blur")
    with pytest.raises(ValueError, match="noise_std > 0"):
        flow.apply_denoiser(torch.zeros(1, 3, 1, 4, 4), "tweedie")
    with pytest.raises(ValueError, match="unconditional"):
        flow(torch.zeros(1, 3, 1, 4, 4), y=torch.zeros(1))
    with pytest.raises(ValueError, match="expected points"):
        flow(torch.zeros(1, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="speed"):
        moving_sprites(2, speed=(2.0, 1.0))
    with pytest.raises(ValueError, match="videos"):
        frame_fd(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8))


def test_sprite_videos_are_seeded_bounce_inside_the_canvas_and_move_at_their_speed():
    a, b = moving_sprites(16, seed=7), moving_sprites(16, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, moving_sprites(16, seed=8))
    assert a.shape == (16, 8, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    g = torch.Generator().manual_seed(0)
    c, on = sprite_trajectories(200, frames=12, size=8, speed=(0.5, 1.5), generator=g)
    assert c.min() >= 0 and c.max() <= 7
    step = (c[:, 1:] - c[:, :-1]).norm(dim=-1)
    assert step.max() <= 1.5 + 1e-9  # reflection is 1-Lipschitz
    # elastic bounces: the centre is the unfolded straight line folded into [0, L] (a triangle wave)
    c, _ = sprite_trajectories(
        50, frames=20, size=8, speed=(0.5, 1.5), generator=torch.Generator().manual_seed(1)
    )
    g = torch.Generator().manual_seed(1)  # the same draws, in sprite_trajectories' order
    p0 = torch.rand(50, 2, 2, generator=g, dtype=F64) * 7
    ang = torch.rand(50, 2, generator=g, dtype=F64) * 2 * torch.pi
    v = torch.stack([ang.cos(), ang.sin()], -1) * (0.5 + torch.rand(50, 2, generator=g, dtype=F64))[..., None]
    line = p0[:, None] + v[:, None] * torch.arange(20, dtype=F64).view(1, -1, 1, 1)
    assert torch.allclose(c, 7 - (7 - line.remainder(14)).abs(), atol=1e-9)
    # on a huge canvas nothing bounces: constant velocity with a speed in the range
    c, _ = sprite_trajectories(200, frames=5, size=10**8, speed=(0.5, 1.5), generator=g)
    v = c[:, 1:] - c[:, :-1]
    assert torch.allclose(v, v[:, :1].expand_as(v), atol=1e-9)
    assert v.norm(dim=-1).min() >= 0.5 - 1e-9 and v.norm(dim=-1).max() <= 1.5 + 1e-9
    # the brightest pixel of a one-sprite frame sits on the rounded centre
    c, on = sprite_trajectories(
        50, frames=2, size=8, max_sprites=1, generator=torch.Generator().manual_seed(9)
    )
    x = moving_sprites(50, frames=2, size=8, max_sprites=1, generator=torch.Generator().manual_seed(9))
    arg = x[:, 0, 0].flatten(1).argmax(1)
    assert torch.equal(torch.stack([arg // 8, arg % 8], 1), c[:, 0, 0].round().long())


def test_frechet_distances_see_noise_and_wrong_motion():
    a, b = moving_sprites(128, seed=0), moving_sprites(128, seed=1)
    assert frame_fd(a, a) < 1e-8
    assert frame_fd(a, b) < frame_fd(a, b + 0.2 * torch.randn_like(b))
    shuffled = b[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert abs(frame_fd(a, shuffled) - frame_fd(a, b)) < 1e-9  # same frames ...
    assert pair_fd(a, shuffled) > 2 * pair_fd(a, b)  # ... wrong motion


def test_recipe_trains_samples_and_evaluates(tmp_path):
    from flowforge.recipes import evaluate, get_recipe, sample, train_recipe

    over = {"n_train": 64, "n_test": 48, "eval_samples": 48, "width": 16, "head_dim": 8, "blocks": 1,
            "deep_layers": 1, "denoiser_width": 16, "denoiser_layers": 1, "batch_size": 8, "frames": 4}  # fmt: skip
    train_recipe("sprites-starflow-v", overrides=over, out=tmp_path / "v", steps=3, progress=False)
    res = evaluate(tmp_path / "v")
    assert set(get_recipe("sprites-starflow-v").metrics) <= set(res)
    assert res["jacobi_max_abs_diff"] < 1e-4
    assert res["sequential_passes"] == 4 * 16 + 16 and res["jacobi_passes"] <= res["sequential_passes"]
    assert all(res[f"fd_frames_{k}"] >= 0 for k in ("raw", "tweedie", "learned", "control"))
    assert sample(tmp_path / "v", 2, method="jacobi").shape == (2, 4, 1, 8, 8)
