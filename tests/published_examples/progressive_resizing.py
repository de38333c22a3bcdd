# Adapted from pytorch-accelerated 0.1.61,
# examples/vision/transfer_learning/progressive_resizing.py
# (Copyright © 2021 Chris Hughes, Apache-2.0). Changes, marked "CHANGED": the imports name
# pa_mixins instead of pytorch_accelerated; timm's resnet50d is replaced by a small CNN and
# the Imagenette folders (a download, read with torchvision) by random images made here at
# each size; the image sizes, epochs and batch size shrink with them; no func_to_script.
# The trainer code (the callbacks, the three train() calls) is the published code.
########################################################################
# This example trains a ResNet50d on the Imagenette Dataset using progressive resizing
########################################################################
from collections import namedtuple
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import TensorDataset
from torchmetrics import Accuracy

# CHANGED: pytorch_accelerated -> pa_mixins
from pa_mixins.callbacks import (
    EarlyStoppingCallback,
    LogMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    SaveBestModelCallback,
    TerminateOnNaNCallback,
    TrainerCallback,
)
from pa_mixins.trainer import Trainer, TrainerPlaceholderValues


class AccuracyCallback(TrainerCallback):
    def __init__(self, num_classes):
        self.accuracy = Accuracy(task="multiclass", num_classes=num_classes)

    def on_training_run_start(self, trainer, **kwargs):
        self.accuracy.to(trainer._eval_dataloader.device)

    def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
        preds = batch_output["model_outputs"].argmax(dim=-1)
        self.accuracy.update(preds, batch[1])

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", self.accuracy.compute().item())
        self.accuracy.reset()


# CHANGED: random images of each size instead of ImageFolder + torchvision transforms
NUM_CLASSES = 3


def make_datasets(image_size):
    generator = torch.Generator().manual_seed(image_size)
    datasets = {}
    for split, num_images in (("train", 96), ("val", 48)):
        labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
        images = torch.rand(num_images, 3, image_size, image_size, generator=generator)
        images[:, 0] += labels[:, None, None]  # learnable: the red channel says the class
        datasets[split] = TensorDataset(images, labels)
    return datasets


# CHANGED: instead of timm's create_model("resnet50d", pretrained=False, ...)
def create_model(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, num_classes),
    )  # fmt: skip


def main(save_path="best_model.pt"):  # CHANGED: a save path for SaveBestModelCallback
    num_classes = NUM_CLASSES

    model = create_model(num_classes=num_classes)

    # Define loss function
    loss_func = nn.CrossEntropyLoss()

    # Define optimizer
    optimizer = torch.optim.Adam(params=model.parameters(), lr=0.01 / 25)

    trainer = Trainer(
        model,
        loss_func=loss_func,
        optimizer=optimizer,
        callbacks=(
            TerminateOnNaNCallback,
            AccuracyCallback(num_classes=num_classes),
            PrintProgressCallback,
            ProgressBarCallback,
            LogMetricsCallback,
            EarlyStoppingCallback(early_stopping_patience=2),
            SaveBestModelCallback(
                save_path=save_path, watch_metric="accuracy", greater_is_better=True
            ),
        ),
    )

    EpochConfig = namedtuple(
        "EpochConfig", ["num_epochs", "train_image_size", "eval_image_size", "lr"]
    )

    # CHANGED: sizes and epochs (were 64/128/224 px, 2/3/6 epochs)
    epoch_configs = [
        EpochConfig(num_epochs=2, train_image_size=8, eval_image_size=8, lr=0.01),
        EpochConfig(num_epochs=2, train_image_size=12, eval_image_size=12, lr=0.01),
        EpochConfig(num_epochs=1, train_image_size=16, eval_image_size=16, lr=0.001),
    ]

    for e_config in epoch_configs:
        trainer.print(f"Training with image size: {e_config.train_image_size}")

        image_datasets = make_datasets(e_config.train_image_size)  # CHANGED

        # Here we use placeholders for the number of epochs and number of steps per epoch, so that the
        # trainer can inject those values later. This is especially key for the number of update steps
        # which will change depending on whether training is distributed or not
        lr_scheduler = partial(
            OneCycleLR,
            max_lr=e_config.lr,
            epochs=TrainerPlaceholderValues.NUM_EPOCHS,
            steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
        )

        trainer.train(
            train_dataset=image_datasets["train"],
            eval_dataset=image_datasets["val"],
            num_epochs=e_config.num_epochs,
            create_scheduler_fn=lr_scheduler,
            per_device_batch_size=16,  # CHANGED: was 32
            reset_run_history=False,
        )
    return trainer  # CHANGED: returned for the test
