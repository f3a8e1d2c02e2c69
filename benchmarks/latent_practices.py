"""Latent-space practices (issue 15, item 5): FAE against a pixel autoencoder on digits, and per-channel
standardisation, spatial loss weights and a decoder-space loss on latents of a frozen 3-D reconstruction model.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/latent_practices.py [--part fae|scenes|all] [--seeds 0 1] [--quick]

FAE part (sklearn digits, 1,438 train / 359 test images): a PatchFeatureNet classifier (16 tokens x 32-d,
trained once, frozen) is the "pretrained encoder"; the FAE (one attention layer -> 6-d latent -> features
-> pixels) and a KLAutoencoder with a 6-d latent (1x1 grid) train for the same steps; then the same latent
flow matching (MLP, per-channel standardised latents) on each. FD of 1,438 samples against the 359 test
images in the shipped digits classifier's features (flowforge.metrics, a different network from the FAE's
feature encoder) and in raw pixels (64-d), linear-probe accuracy of the latent means (logistic regression,
train -> test). Control: FD of the 1,438 train images against the test images. ``--random-features``
adds the same FAE on an untrained feature network (does the pretraining matter?).

Scenes part: scenes of 3 coloured Gaussians rendered to two 16x16 views; a GaussianGridReconstructor
(views -> 8x4x4x4 grid of Gaussians) trained once and frozen; a latent flow (MLP on the 512-d grid) with
each practice on or off. FD of the rendered views of 2,000 samples against 2,000 held-out scenes in a
96-d feature space: both views average-pooled to 4x4 (2 views x 3 colours x 4 x 4). Controls: FD of a
fresh draw of true scenes, and of the reconstructions of the held-out scenes (the encoder's floor).
One thread; seeds stated; every model trains with flowforge's Trainer (AdamW, EMA).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from flowforge import FlowMatching
from flowforge.apps.scenes3d import GaussianGridReconstructor, render_views, sample_scenes, view_features
from flowforge.data.images import load_digits
from flowforge.latent import FeatureAutoencoder, KLAutoencoder, LatentModel, LatentStandardizer, latent_stats
from flowforge.metrics import frechet_distance
from flowforge.metrics.image_features import image_metrics
from flowforge.nn import MLP, PatchFeatureNet
from flowforge.recipes.fae import linear_probe_accuracy, pretrain_classifier
from flowforge.train import train


def fit(model, data, steps, lr, seed, batch_size=64, ema=0.995):
    t = time.time()
    run = train(
        model,
        data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=False,
        threads=1,
        ema_decay=ema,
    )
    print(f"  trained {type(model).__name__} {steps} steps in {time.time() - t:.0f}s", flush=True)
    return run.load_into(copy.deepcopy(model), ema=True).eval()


def unit(q: torch.Tensor) -> torch.Tensor:
    return 2 * q.float() / 16 - 1


@torch.no_grad()
def latent_flow(ae, x_train, steps, seed, *, width=128, depth=3, lr=1e-3):
    shift, scale = latent_stats(ae, x_train)
    torch.manual_seed(seed)
    fm = FlowMatching(MLP(dim=ae.latent_shape, width=width, depth=depth))
    lm = LatentModel(fm, ae, shift=shift, scale=scale)
    with torch.enable_grad():
        return fit(lm, x_train, steps, lr, seed, batch_size=128, ema=0.999)


def fae_part(a) -> dict:
    tr, te = load_digits("train"), load_digits("test")
    xtr, xte = unit(tr.x), unit(te.x)
    out: dict = {"control_fd_train_vs_test": image_metrics(xtr, xte, dataset="digits", metrics=["fd"])["fd"]}
    out["control_fd_pixels_train_vs_test"] = frechet_distance(
        xtr.flatten(1).double(), xte.flatten(1).double()
    )
    print(
        f"control: FD(train images, test images) = {out['control_fd_train_vs_test']:.2f} (classifier features), "
        f"{out['control_fd_pixels_train_vs_test']:.2f} (64 pixels)",
        flush=True,
    )
    ae_steps, fm_steps = (60, 60) if a.quick else (a.ae_steps, a.fm_steps)
    rows = []
    for seed in a.seeds:
        torch.manual_seed(seed)
        feats = pretrain_classifier(
            PatchFeatureNet(image_size=8, patch=2, dim=32), xtr, tr.y, steps=40 if a.quick else 600, seed=seed
        )
        acc = float((feats(xte).argmax(1) == te.y).float().mean())
        print(f"seed {seed}: feature network test accuracy {acc:.3f}", flush=True)
        torch.manual_seed(seed)
        fae = FeatureAutoencoder(feats, num_tokens=16, feature_dim=32, latent_dim=6, width=64)
        torch.manual_seed(seed)
        kl = KLAutoencoder(image_size=8, latent_channels=6, channels=(16, 32, 32), downsample=8)
        models = [("fae", fae), ("pixel_ae", kl)]
        if a.random_features:  # ablation: the same FAE on an untrained (random) feature network
            torch.manual_seed(seed)
            rand = PatchFeatureNet(image_size=8, patch=2, dim=32).eval().requires_grad_(False)
            torch.manual_seed(seed)
            models.insert(1, ("fae_random_features", FeatureAutoencoder(rand, num_tokens=16, feature_dim=32)))
        models = [m for m in models if m[0] in a.models]
        for name, ae in models:
            t0 = time.time()
            ae = fit(ae, xtr, ae_steps, 1e-3, seed)
            n_par = sum(p.numel() for p in ae.parameters() if p.requires_grad)
            with torch.no_grad():
                rec = ae(xte)
                ztr, zte = ae.encode(xtr)[0].flatten(1), ae.encode(xte)[0].flatten(1)
            rec_fd = image_metrics(rec, xte, dataset="digits", metrics=["fd"])["fd"]
            probe = linear_probe_accuracy(ztr, tr.y, zte, te.y)
            lm = latent_flow(ae, xtr, fm_steps, seed)
            g = torch.Generator().manual_seed(1000 + seed)
            with torch.no_grad():
                x = lm.generator().sample(len(xtr), solver="heun", steps=20, generator=g).clamp(-1, 1)
            fd = image_metrics(x, xte, dataset="digits", metrics=["fd"])["fd"]
            fd_pix = frechet_distance(x.flatten(1).double(), xte.flatten(1).double())
            row = dict(
                seed=seed,
                model=name,
                trainable_params=n_par,
                recon_mse=float(((rec - xte) / 2).square().mean()),
                recon_fd=rec_fd,
                probe_acc=probe,
                fd=fd,
                fd_pixels=fd_pix,
                seconds=round(time.time() - t0),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    out["rows"] = rows
    return out


VARIANTS = {
    "plain": dict(per_channel=False, weights=False, decoder=0.0),
    "+standardise": dict(per_channel=True, weights=False, decoder=0.0),
    "+spatial_weights": dict(per_channel=False, weights=True, decoder=0.0),
    "+decoder_loss": dict(per_channel=False, weights=False, decoder=1.0),
    "all_three": dict(per_channel=True, weights=True, decoder=1.0),
    "standardise+spatial_weights": dict(per_channel=True, weights=True, decoder=0.0),
    "standardise+decoder_loss": dict(per_channel=True, weights=False, decoder=1.0),
}


def scenes_part(a) -> dict:
    size = 16
    n_train, n_eval = (256, 256) if a.quick else (4000, 2000)
    rec_steps, fm_steps = (30, 30) if a.quick else (a.rec_steps, a.scene_fm_steps)
    views_tr = render_views(sample_scenes(n_train, generator=torch.Generator().manual_seed(0)), size)
    views_te = render_views(sample_scenes(n_eval, generator=torch.Generator().manual_seed(1)), size)
    views_fresh = render_views(sample_scenes(n_eval, generator=torch.Generator().manual_seed(2)), size)
    f_te = view_features(views_te)
    out: dict = {"control_fd_fresh_draw": frechet_distance(view_features(views_fresh), f_te)}
    print(f"control: FD(fresh true scenes, held-out scenes) = {out['control_fd_fresh_draw']:.4f}", flush=True)
    torch.manual_seed(0)
    rec = fit(GaussianGridReconstructor(image_size=size, width=24), views_tr, rec_steps, 2e-3, 0)
    with torch.no_grad():
        recon = rec(views_te)
        u = rec.encode(views_tr)[0]
    out["recon_mse"] = float(((recon - views_te) / 2).square().mean())
    out["control_fd_reconstructions"] = frechet_distance(view_features(recon), f_te)
    std = u.transpose(0, 1).flatten(1).std(1)
    out["latent_channel_std"] = [round(float(s), 3) for s in std]
    out["latent_channel_mean"] = [round(float(m), 3) for m in u.transpose(0, 1).flatten(1).mean(1)]
    out["latent_global_mean_std"] = [round(float(u.mean()), 3), round(float(u.std()), 3)]
    print(f"latent channel means {out['latent_channel_mean']}, global {out['latent_global_mean_std']}")
    print(
        f"reconstructor: mse {out['recon_mse']:.4f}, FD of reconstructions {out['control_fd_reconstructions']:.4f}, "
        f"latent channel std {out['latent_channel_std']}",
        flush=True,
    )
    rows = []
    for seed in a.seeds:
        for name in a.variants:
            v = VARIANTS[name]
            st = LatentStandardizer(8, per_channel=v["per_channel"]).fit(u)
            torch.manual_seed(seed)
            fm = FlowMatching(MLP(dim=rec.latent_shape, width=256, depth=3))
            lm = LatentModel(
                fm,
                rec,
                shift=st.shift,
                scale=st.scale,
                spatial_weight=(lambda z: 0.1 + rec.occupancy(z)) if v["weights"] else None,
                decoder_loss=v["decoder"],
            )
            t0 = time.time()
            lm = fit(lm, views_tr, fm_steps, 1e-3, seed, batch_size=128, ema=0.999)
            g = torch.Generator().manual_seed(1000 + seed)
            with torch.no_grad():
                x = lm.generator().sample(n_eval, solver="heun", steps=20, generator=g)
            row = dict(
                seed=seed,
                variant=name,
                fd=frechet_distance(view_features(x), f_te),
                seconds=round(time.time() - t0),
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    out["rows"] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", default="all", choices=["fae", "scenes", "all"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ae-steps", type=int, default=1500)
    p.add_argument("--fm-steps", type=int, default=2000)
    p.add_argument("--rec-steps", type=int, default=600)
    p.add_argument("--scene-fm-steps", type=int, default=1500)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:5], choices=list(VARIANTS))
    p.add_argument("--models", nargs="+", default=["fae", "fae_random_features", "pixel_ae"])
    p.add_argument(
        "--random-features", action="store_true", help="add the FAE on an untrained feature network"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--out", default="benchmarks/RESULTS-latent_practices.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    res: dict = {"args": vars(a)}
    t0 = time.time()
    if a.part in ("fae", "all"):
        res["fae"] = fae_part(a)
    if a.part in ("scenes", "all"):
        res["scenes"] = scenes_part(a)
    res["seconds"] = round(time.time() - t0)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out} ({res['seconds']} s)")


if __name__ == "__main__":
    main()
