# Adapted from pytorch-accelerated 0.1.61, examples/core/train_with_metrics_in_loop.py
# (Copyright © 2021 Chris Hughes, Apache-2.0). Changes, marked "CHANGED": the import names
# pa_mixins instead of pytorch_accelerated; MNIST (a torchvision download) is replaced by
# random 28x28 images made here, and the split sizes shrink with it.
########################################################################
# This example trains a model on the MNIST Dataset

# This example demonstrates how the default trainer class can be overridden
# so that we can record classification metrics
########################################################################

import torch
from torch import nn, optim
from torch.utils.data import TensorDataset, random_split
from torchmetrics import Accuracy, MetricCollection, Precision, Recall

from pa_mixins import Trainer  # CHANGED: pytorch_accelerated -> pa_mixins


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

    def forward(self, x):
        return self.main(x.view(x.shape[0], -1))


class TrainerWithMetrics(Trainer):
    def __init__(self, num_classes, *args, **kwargs):
        super().__init__(*args, **kwargs)

        # this will be moved to the correct device automatically by the
        # MoveModulesToDeviceCallback callback, which is used by default
        self.metrics = MetricCollection(
            {
                "accuracy": Accuracy(task="multiclass", num_classes=num_classes),
                "precision": Precision(task="multiclass", num_classes=num_classes, average="macro"),
                "recall": Recall(task="multiclass", num_classes=num_classes, average="macro"),
            }
        )

    def calculate_eval_batch_loss(self, batch):
        batch_output = super().calculate_eval_batch_loss(batch)
        preds = batch_output["model_outputs"].argmax(dim=-1)

        self.metrics.update(preds, batch[1])

        return batch_output

    def eval_epoch_end(self):
        metrics = self.metrics.compute()
        self.run_history.update_metric("accuracy", metrics["accuracy"].cpu())
        self.run_history.update_metric("precision", metrics["precision"].cpu())
        self.run_history.update_metric("recall", metrics["recall"].cpu())

        self.metrics.reset()


# CHANGED: MNIST-shaped data instead of the torchvision download (the label is learnable)
NUM_SAMPLES, SPLIT = 600, [500, 50, 50]


def fake_mnist():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (NUM_SAMPLES,), generator=generator)
    images = torch.rand(NUM_SAMPLES, 1, 28, 28, generator=generator) * 0.5
    images[torch.arange(NUM_SAMPLES), 0, labels, :] += 0.5  # the row of the label is bright
    dataset = TensorDataset(images, labels)
    dataset.class_to_idx = {str(i): i for i in range(10)}
    return dataset


def main():
    dataset = fake_mnist()  # CHANGED: was MNIST(DATA_PATH, download=True, ...)
    num_classes = len(dataset.class_to_idx)

    train_dataset, validation_dataset, test_dataset = random_split(dataset, SPLIT)  # CHANGED
    model = MNISTModel()
    optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loss_func = nn.CrossEntropyLoss()

    trainer = TrainerWithMetrics(
        model=model, loss_func=loss_func, optimizer=optimizer, num_classes=num_classes
    )

    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        num_epochs=2,
        per_device_batch_size=32,
    )

    trainer.evaluate(
        dataset=test_dataset,
        per_device_batch_size=64,
    )
    return trainer  # CHANGED: returned for the test


if __name__ == "__main__":
    main()
