"""Progressive resizing: train on small images first, then on larger ones, with one trainer.

    python examples/progressive_resizing.py

Small images make the first epochs cheap; the later epochs at full size refine the model.
Each stage is one ``train()`` call with the same trainer and datasets rendered at another
size; ``reset_run_history=False`` keeps counting epochs and metrics across the stages. A
network that ends in adaptive pooling accepts any image size.

The images are made here: a disc, a square or a ring, placed at random, drawn at whatever
size is asked. About ten seconds on a CPU.
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.callbacks import LogMetricsCallback, PrintProgressCallback

SHAPES = ("disc", "square", "ring")


def make_scenes(num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each image shows, independent of its size: a shape label, a centre and a radius
    (as fractions of the image side)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(SHAPES), (num_images,), generator=generator)
    centres = 0.3 + 0.4 * torch.rand(num_images, 2, generator=generator)
    radii = 0.15 + 0.1 * torch.rand(num_images, generator=generator)
    return labels, centres, radii


def render(scenes: tuple[torch.Tensor, torch.Tensor, torch.Tensor], size: int) -> TensorDataset:
    """The scenes drawn as 1 x size x size images, with a little noise."""
    labels, centres, radii = scenes
    coords = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dx = x - centres[:, 0, None, None]
    dy = y - centres[:, 1, None, None]
    r = radii[:, None, None]
    distance = (dx**2 + dy**2).sqrt()
    shapes = torch.stack(
        [
            distance < r,  # disc
            (dx.abs() < r) & (dy.abs() < r),  # square
            (distance < r) & (distance > 0.6 * r),  # ring
        ],
        dim=1,
    ).float()
    images = shapes[torch.arange(len(labels)), labels].unsqueeze(1)
    noise = 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(size))
    return TensorDataset(images + noise, labels)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),  # 4x4 whatever the input size: the head does not change
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, len(SHAPES)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 24, 32])
    parser.add_argument("--epochs-per-size", type=int, nargs="+", default=[3, 2, 1])
    parser.add_argument("--num-images", type=int, default=1200)
    args = parser.parse_args()

    train_scenes = make_scenes(args.num_images, seed=0)
    eval_scenes = make_scenes(args.num_images // 4, seed=1)

    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        callbacks=(PrintProgressCallback, LogMetricsCallback),  # no progress bars
    )

    for size, num_epochs in zip(args.sizes, args.epochs_per_size):
        trainer.print(f"== Training with {size}x{size} images")
        trainer.train(
            train_dataset=render(train_scenes, size),
            eval_dataset=render(eval_scenes, size),
            num_epochs=num_epochs,
            per_device_batch_size=32,
            # a new one-cycle schedule for each stage; the placeholders are filled in by
            # train() with this stage's number of epochs and updates per epoch
            create_scheduler_fn=functools.partial(
                torch.optim.lr_scheduler.OneCycleLR,
                max_lr=1e-2,
                epochs=TrainerPlaceholderValues.NUM_EPOCHS,
                steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
            ),
            reset_run_history=False,
            seed=size,
        )

    final = render(eval_scenes, args.sizes[-1])
    predictions = trainer.predict(final, per_device_batch_size=128).argmax(dim=1).cpu()
    accuracy = (predictions == final.tensors[1]).float().mean().item()
    epochs = len(trainer.run_history.get_metric_values("train_loss_epoch"))
    trainer.print(f"Trained {epochs} epochs; accuracy at {args.sizes[-1]}px: {accuracy:.3f}")


if __name__ == "__main__":
    main()
