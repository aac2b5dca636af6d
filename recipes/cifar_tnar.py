"""TNAR on CIFAR-10 with 4000 labels (Yu et al., CVPR 2019): ``recipes/semisupervised.py`` with the
CIFAR-10 defaults (Conv-Large, 32 labeled + 128 unlabeled images a step, Adam 1e-3 for 200k
steps, decay over the last 8%) and a VAE chart (``--chart lgan`` for the Localized GAN).

Give the chart made by ``recipes/chart.py`` (``--chart-path``); without one, a chart is trained
first on the training images (``--chart-epochs``, 10) and saved under ``<out>/chart``:

    accelerate launch recipes/chart.py --dataset cifar10 --kind vae --epochs 50
    accelerate launch recipes/cifar_tnar.py --chart-path runs/chart_cifar10_vae/model
    accelerate launch recipes/cifar_tnar.py --chart lgan --chart-path runs/chart_cifar10_lgan/model
    python recipes/cifar_tnar.py --synthetic --steps 2 --chart-epochs 1   # smoke test, no files

Every option of ``recipes/semisupervised.py`` applies (``--help``).
"""

import semisupervised

if __name__ == "__main__":
    semisupervised.main(doc=__doc__, dataset="cifar10", methods="tnar", chart="vae", out="runs/cifar_tnar")
