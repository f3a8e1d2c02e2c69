"""Turbulence compression (issue 14, item 2; ZipGAN's idea): decoders of stored 2-D turbulence at compression
16 and 64, judged by relative L2, energy-spectrum error per shell and velocity-gradient PDF distance, on
held-out flows from another seed; the SR-GAN critic's score against the true error (Spearman); temporal
interpolation of a middle snapshot from two stored ends.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/turbulence.py [--steps 800] [--quick]

Data: forced Kolmogorov flow (k_f = 4, drag 0.1) on 64x64, nu = 2e-3, IF-RK4 dt = 0.02, from
flowforge.apps.turbulence. Training flows: seed 0; held-out flows: seed 1 (and nu = 5e-3, seed 2, for a
different Reynolds number). One thread, seeded; the learned decoders train with flowforge's Trainer.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import flowforge.apps.turbulence as T
from flowforge.train import train

SHELLS = (1, 2, 4, 6, 8, 12, 16, 21)


def metrics(pred: torch.Tensor, true: torch.Tensor) -> dict:
    se = T.spectrum_error(pred[:, 0], true[:, 0])
    return {
        "rel_l2": float(T.relative_l2(pred, true).mean()),
        "spec_err_mean": float(se.mean()),
        "spec_err_shells": {k: float(se[k - 1]) for k in SHELLS},
        "grad_pdf_w1": float(T.gradient_pdf_distance(pred[:, 0], true[:, 0])),
    }


def spectrum_mean(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    return T.spectrum_error(pred, true).mean()


def per_field(pred: torch.Tensor, true: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` on each field alone: ``(B,)``."""
    return torch.stack([fn(p[None, 0], t[None, 0]) for p, t in zip(pred, true)])


def fit(model, data, steps, lr, seed):
    t = time.time()
    run = train(
        model, data, steps=steps, batch_size=16, lr=lr, seed=seed, progress=False, threads=1, ema_decay=0.995
    )
    print(f"  trained {type(model).__name__} in {time.time() - t:.0f}s", flush=True)
    return run.load_into(copy.deepcopy(model), ema=True).eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--out", default="benchmarks/RESULTS-turbulence.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, nu = 64, 2e-3
    sim = dict(n=n, dt=0.02, forcing="kolmogorov", forcing_k=4, drag=0.1)
    flows, snaps, test_flows = (16, 80, 8) if not a.quick else (2, 8, 2)
    t0 = time.time()
    tr = T.simulate_snapshots(flows, nu=nu, snapshots=snaps, every=0.5, burn_in=30.0, seed=0, **sim).float()
    te_seq = T.simulate_snapshots(
        test_flows, nu=nu, snapshots=17, every=0.5, burn_in=30.0, seed=1, **sim
    ).float()
    te_re = T.simulate_snapshots(
        test_flows, nu=5e-3, snapshots=9, every=1.0, burn_in=30.0, seed=2, **sim
    ).float()
    print(f"simulated in {time.time() - t0:.0f}s; train {tuple(tr.shape)}", flush=True)
    scale = float(tr.std())
    x_train = tr.reshape(-1, 1, n, n)
    test = te_seq[:, ::2].reshape(-1, 1, n, n)  # every 1.0 time unit, 9 a flow
    test_re = te_re.reshape(-1, 1, n, n)
    # the noise floor: independent flows (another seed) at the same times, against the held-out truth
    other = T.simulate_snapshots(test_flows, nu=nu, snapshots=9, every=1.0, burn_in=30.0, seed=3, **sim)
    other = other.float().reshape(-1, 1, n, n)
    res: dict = {
        "config": {
            "n": n,
            "nu": nu,
            "steps": a.steps,
            "train_fields": len(x_train),
            "test_fields": len(test),
            "scale": scale,
        }
    }
    pool_scores, pool_err, pool_dec = {}, {}, {}
    g = torch.Generator().manual_seed(123)
    for f in (4, 8):
        cr = T.compression_ratio(f)
        print(f"== compression {cr} (factor {f})", flush=True)
        r_scale = float((x_train / scale - T.spectral_upsample(T.downsample(x_train / scale, f), f)).std())
        torch.manual_seed(f)
        gan = fit(T.SRGAN(f, scale=scale, adv_weight=0.01), x_train, a.steps, 1e-3, f)
        fm = fit(
            T.FlowSuperResolver(f, n, scale=scale, residual_scale=r_scale), x_train, a.steps, 2e-3, 10 + f
        )
        rows: dict = {}
        for name, tt in (("test", test), ("test_re", test_re)):
            low = T.downsample(tt, f)
            dec = {
                "bicubic": T.bicubic_upsample(low, f),
                "spectral": T.spectral_upsample(low, f),
            }
            if T.wavelets_available():
                dec["wavelet-db4"] = T.wavelet_truncate(tt, f, wavelet="db4")
            else:
                print("  wavelet decoder skipped: PyWavelets missing (pip install 'flowforge[wavelets]')")
            dec["srgan"] = gan.decode(low)
            t = time.time()
            dec["flow (1 draw, 8 heun)"] = fm.decode(low, steps=8, generator=g)
            print(f"  flow decode {len(low)} fields: {time.time() - t:.0f}s", flush=True)
            ctrl = {"control: lowpass truth (exact band)": T.lowpass(tt, f)}
            if name == "test":
                ctrl["control: another snapshot"] = other
            rows[name] = {k: metrics(v, tt) for k, v in {**dec, **ctrl}.items()}
            if name == "test":
                scores = {k: gan.score(v) for k, v in dec.items()}
                errs = {k: T.relative_l2(v, tt) for k, v in dec.items()}
                s_all, e_all = torch.cat(list(scores.values())), torch.cat(list(errs.values()))
                spec = torch.cat([per_field(v, tt, spectrum_mean) for v in dec.values()])
                gpdf = torch.cat([per_field(v, tt, T.gradient_pdf_distance) for v in dec.values()])
                rows["critic"] = {
                    "spearman_pooled": float(T.spearman(s_all, e_all)),
                    "spearman_pooled_spectrum_err": float(T.spearman(s_all, spec)),
                    "spearman_pooled_grad_pdf": float(T.spearman(s_all, gpdf)),
                    "spearman_within_srgan": float(T.spearman(scores["srgan"], errs["srgan"])),
                    "spearman_within_flow": float(
                        T.spearman(scores["flow (1 draw, 8 heun)"], errs["flow (1 draw, 8 heun)"])
                    ),
                    "mean_score": {k: float(v.mean()) for k, v in scores.items()},
                    "score_truth": float(gan.score(tt).mean()),
                }
                pool_scores[f], pool_err[f], pool_dec[f] = s_all, e_all, list(scores)
        res[f"cr{cr}"] = rows
        # temporal interpolation (stored at this compression): middle of (t, t+0.5, t+1)
        if f == 4:
            trip = torch.stack([tr[:, i : i + 3] for i in range(0, snaps - 2)], 1).reshape(-1, 3, n, n)
            base = trip[:, 1:2] / scale - T.spectral_upsample(
                T.downsample(trip[:, [0, 2]] / scale, f), f
            ).mean(1, keepdim=True)
            fi = fit(
                T.FlowSuperResolver(f, n, frames=3, scale=scale, residual_scale=float(base.std())),
                trip,
                a.steps,
                2e-3,
                99,
            )
            tt3 = torch.stack([te_seq[:, i : i + 3] for i in range(0, 15, 2)], 1).reshape(-1, 3, n, n)
            mid = tt3[:, 1:2]
            ends_low = T.downsample(tt3[:, [0, 2]], f)
            up = T.spectral_upsample(ends_low, f)
            interp = {
                "linear in time, full-res ends (control)": tt3[:, [0, 2]].mean(1, keepdim=True),
                "linear in time, spectral-decoded ends": up.mean(1, keepdim=True),
                "linear in time, srgan-decoded ends": 0.5
                * (gan.decode(ends_low[:, :1]) + gan.decode(ends_low[:, 1:])),
                "flow conditioned on both stored ends": fi.decode(ends_low, steps=8, generator=g),
                "flow SR of the stored middle (reference)": fm.decode(
                    T.downsample(mid, f), steps=8, generator=g
                ),
            }
            res["interp_cr16"] = {k: metrics(v, mid) for k, v in interp.items()}
    Path(a.out).write_text(json.dumps(res, indent=1))
    # ---- markdown
    print("\n### Turbulence compression (64x64 Kolmogorov flow, nu=2e-3; held-out seed)\n")
    for cr in (16, 64):
        for name in ("test", "test_re"):
            rows = res[f"cr{cr}"][name]
            print(
                f"\n**compression {cr}, {'held-out flows nu=2e-3' if name == 'test' else 'other Reynolds number nu=5e-3 (decoders trained at 2e-3)'}**\n"
            )
            print(
                "| decoder | rel L2 | spectrum rel. err (mean k=1..21) | "
                + " | ".join(f"k={k}" for k in SHELLS)
                + " | grad-PDF W1 |"
            )
            print("|---|---|---|" + "---|" * len(SHELLS) + "---|")
            for k, v in rows.items():
                print(
                    f"| {k} | {v['rel_l2']:.3f} | {v['spec_err_mean']:.3f} | "
                    + " | ".join(f"{v['spec_err_shells'][s]:.2f}" for s in SHELLS)
                    + f" | {v['grad_pdf_w1']:.3f} |"
                )
            dec_only = {k: v for k, v in rows.items() if not k.startswith("control")}
            for m in ("rel_l2", "spec_err_mean", "grad_pdf_w1"):
                best = min(dec_only, key=lambda k: dec_only[k][m])
                print(f"\nbest {m}: {best} ({dec_only[best][m]:.3f})", end="")
            print()
        c = res[f"cr{cr}"]["critic"]
        print(
            f"\ncritic (SR-GAN discriminator) at compression {cr}: Spearman(score, rel L2) pooled over decoders "
            f"{c['spearman_pooled']:.3f} (with per-field spectrum error {c['spearman_pooled_spectrum_err']:.3f}, with per-field "
            f"gradient-PDF W1 {c['spearman_pooled_grad_pdf']:.3f}); within SR-GAN outputs {c['spearman_within_srgan']:.3f}; within flow outputs "
            f"{c['spearman_within_flow']:.3f}; mean score by decoder {json.dumps({k: round(v, 2) for k, v in c['mean_score'].items()})}; truth {c['score_truth']:.2f}"
        )
    print("\n**temporal interpolation, compression 16: middle snapshot from ends 1.0 time unit apart**\n")
    print("| method | rel L2 | spectrum rel. err | grad-PDF W1 |\n|---|---|---|---|")
    for k, v in res["interp_cr16"].items():
        print(f"| {k} | {v['rel_l2']:.3f} | {v['spec_err_mean']:.3f} | {v['grad_pdf_w1']:.3f} |")
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
