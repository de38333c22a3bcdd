# Adapted from pytorch-accelerated 0.1.61, examples/core/custom_callback_event.py
# (Copyright © 2021 Chris Hughes, Apache-2.0). Two changes, marked "CHANGED":
#   - the imports name pa_mixins instead of pytorch_accelerated;
#   - MNIST (a torchvision download) is replaced by random 28x28 images made here, and the
#     split sizes shrink with it.
# Everything else is the published code.
########################################################################
# This example trains a model on the MNIST Dataset and demonstrates using
# a custom callback event
########################################################################

import torch
from torch import nn, optim
from torch.utils.data import TensorDataset, random_split

# CHANGED: pytorch_accelerated -> pa_mixins
from pa_mixins.callbacks import (
    LogMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    TerminateOnNaNCallback,
    TrainerCallback,
)
from pa_mixins.trainer import Trainer


class MNISTModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(in_features=784, out_features=128),
            nn.ReLU(),
            nn.Linear(in_features=128, out_features=64),
            nn.ReLU(),
            nn.Linear(in_features=64, out_features=10),
        )

    def forward(self, input):
        return self.main(input.view(input.shape[0], -1))


class VerifyBatchCallback(TrainerCallback):
    def verify_train_batch(self, trainer, xb, yb):
        assert xb.shape[0] == trainer.run_config.train_per_device_batch_size
        assert xb.shape[1] == 1
        assert xb.shape[2] == 28
        assert xb.shape[3] == 28
        assert yb.shape[0] == trainer.run_config.train_per_device_batch_size


class TrainerWithCustomCallbackEvent(Trainer):
    def calculate_train_batch_loss(self, batch) -> dict:
        xb, yb = batch
        self.callback_handler.call_event("verify_train_batch", trainer=self, xb=xb, yb=yb)
        return super().calculate_train_batch_loss(batch)


# CHANGED: MNIST-shaped random data instead of the torchvision download
NUM_SAMPLES, SPLIT = 600, [550, 50]


def fake_mnist():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(NUM_SAMPLES, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (NUM_SAMPLES,), generator=generator)
    return TensorDataset(images, labels)


def main():
    dataset = fake_mnist()  # CHANGED: was MNIST(DATA_PATH, download=True, ...)
    train_dataset, validation_dataset = random_split(dataset, SPLIT)  # CHANGED: sizes
    model = MNISTModel()
    optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loss_func = nn.CrossEntropyLoss()

    trainer = TrainerWithCustomCallbackEvent(
        model,
        loss_func=loss_func,
        optimizer=optimizer,
        callbacks=(
            VerifyBatchCallback,
            TerminateOnNaNCallback,
            PrintProgressCallback,
            ProgressBarCallback,
            LogMetricsCallback,
        ),
    )

    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        train_dataloader_kwargs={"drop_last": True},
        num_epochs=8,
        per_device_batch_size=32,
    )


if __name__ == "__main__":
    main()
