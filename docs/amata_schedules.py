"""Plot Amata's schedules K(p) and α(p) (docs/img/amata_schedules.png).

pip install -e ".[plot]" && python docs/amata_schedules.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from robustreg import amata_schedule

OUT = Path(__file__).resolve().parent / "img" / "amata_schedules.png"
K_MIN, K_MAX, TAU = 10, 40, 0.4  # the MNIST setting: PGD-40 with α = 0.01 travels τ = 0.4


def main() -> None:
    ps = [i / 400 for i in range(401)]
    runs = [("linear", 1.0), ("exponential", 1.0), ("exponential", 3.0), ("constant", 1.0)]
    fig, (ax_k, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4))
    for kind, eta in runs:
        knobs = [amata_schedule(p, k_min=K_MIN, k_max=K_MAX, tau=TAU, kind=kind, eta=eta) for p in ps]
        ks, alphas = [k for k, _ in knobs], [a for _, a in knobs]
        label = f"{kind} (η = {eta:g})" if kind == "exponential" else kind
        ax_k.step(ps, ks, where="post", label=label)
        ax_a.step(ps, alphas, where="post", label=label)
    ax_k.set(xlabel="progress p = t/T", ylabel="inner steps K", title=f"K: {K_MIN} → {K_MAX}")
    ax_a.set(xlabel="progress p = t/T", ylabel="step size α = τ/K", title=f"α = τ/K, τ = {TAU}")
    for ax in (ax_k, ax_a):
        ax.grid(alpha=0.3)
    ax_k.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
