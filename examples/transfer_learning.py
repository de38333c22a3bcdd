"""Transfer learning with ``ModelFreezer``: train the new head first, then fine-tune it all.

    pip install -e ".[examples]"
    python examples/transfer_learning.py

A small CNN is first trained on the digits 0-4 (standing in for a downloaded pretrained
model), then reused for a new task, the digits 5-9, in two ``train()`` stages:

1. a new head, with the rest of the network frozen: only the head learns;
2. everything unfrozen, the earlier layers with a smaller learning rate.

Uses the 8x8 digit images that scikit-learn ships (no download); about ten seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer
from pa_mixins.callbacks import LogMetricsCallback, PrintProgressCallback
from pa_mixins.finetuning import ModelFreezer

# Fewer default callbacks than usual: no progress bars, to keep the printout short.
CALLBACKS = (PrintProgressCallback, LogMetricsCallback)


def make_cnn(num_classes: int) -> nn.Sequential:
    # ModelFreezer works on "layer groups": the model's direct children, here three of them.
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),  # group 0
        nn.Sequential(  # group 1
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ),
        nn.Linear(32, num_classes),  # group 2, the head
    )


def digit_datasets(digits: range) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets of the given digits as 1x8x8 images, labels counted from 0."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    keep = (labels >= digits.start) & (labels < digits.stop)
    images, labels = images[keep], labels[keep] - digits.start
    split = int(0.8 * len(labels))
    return (
        TensorDataset(images[:split], labels[:split]),
        TensorDataset(images[split:], labels[split:]),
    )


def accuracy(trainer: Trainer, dataset: TensorDataset) -> float:
    # predict() returns the model's outputs for the whole dataset, in order
    predictions = trainer.predict(dataset, per_device_batch_size=128).argmax(dim=1).cpu()
    return (predictions == dataset.tensors[1]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--head-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    # The "pretrained" model: trained on digits 0-4.
    model = make_cnn(num_classes=5)
    source_train, _ = digit_datasets(range(0, 5))
    pretrainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        callbacks=CALLBACKS,
    )
    pretrainer.print("== Pretraining on the digits 0-4")
    pretrainer.train(source_train, num_epochs=args.pretrain_epochs, per_device_batch_size=32)

    # The new task, digits 5-9: a new head replaces the old one.
    model[-1] = nn.Linear(32, 5)
    train_dataset, test_dataset = digit_datasets(range(5, 10))

    # Stage 1: freeze every group but the last (the defaults of freeze()). Batch-norm layers
    # stay trainable unless ModelFreezer(model, freeze_batch_norms=True).
    freezer = ModelFreezer(model)
    freezer.freeze()
    trainable = freezer.get_trainable_parameters()
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)  # an optimizer over the trainable ones
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=CALLBACKS)
    conv_before = model[0][0].weight.detach().clone()
    trainer.print(
        f"== Stage 1: training {sum(p.numel() for p in trainable)} of "
        f"{sum(p.numel() for p in model.parameters())} parameters"
    )
    trainer.train(
        train_dataset,
        num_epochs=args.head_epochs,
        eval_dataset=test_dataset,
        per_device_batch_size=32,
        seed=0,
    )
    unchanged = torch.equal(model[0][0].weight, conv_before)
    trainer.print(f"Frozen convolution unchanged: {unchanged}")
    trainer.print(f"Accuracy after stage 1: {accuracy(trainer, test_dataset):.3f}")

    # Stage 2: unfreeze everything. unfreeze() returns the parameters it unfroze, per group,
    # ready to be added to the optimizer, here with a 10x smaller learning rate.
    for group in freezer.unfreeze().values():
        optimizer.add_param_group({**group, "lr": 1e-3})
    trainer.print("== Stage 2: fine-tuning every layer")
    trainer.train(
        train_dataset,
        num_epochs=args.finetune_epochs,
        eval_dataset=test_dataset,
        per_device_batch_size=32,
        reset_run_history=False,  # keep stage 1's metrics in the run history
    )
    trainer.print(f"Accuracy after stage 2: {accuracy(trainer, test_dataset):.3f}")


if __name__ == "__main__":
    main()
