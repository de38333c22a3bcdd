# Adapted from pytorch-accelerated 0.1.61, examples/nlp/hf_bert_glue_mrpc.py
# (Modifications Copyright (C) 2021 Chris Hughes; Copyright 2021 The HuggingFace Inc. team;
# Apache-2.0). Changes, marked "CHANGED": the import names pa_mixins instead of
# pytorch_accelerated; nothing is downloaded: GLUE MRPC (datasets) becomes made-up sentence
# pairs, bert-base-cased a tiny BERT built from a config with a word-level tokenizer trained
# here, and the "evaluate" GLUE metric a small accuracy counter with the same add_batch /
# compute calls; sizes shrink; no func_to_script. The trainer code is the published code.
########################################################################
#
# This is an accelerated example which trains a Bert base model on GLUE MRPC and
# was adapted from an example produced by HuggingFace available here:
# https://github.com/huggingface/accelerate/blob/main/examples/nlp_example.py
#
########################################################################

import random
from functools import partial

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    get_linear_schedule_with_warmup,
)

from pa_mixins.trainer import Trainer  # CHANGED: pytorch_accelerated -> pa_mixins

MAX_GPU_BATCH_SIZE = 16
EVAL_BATCH_SIZE = 32


class TransformersTrainer(Trainer):
    def __init__(self, model, optimizer, metric, *args, **kwargs):
        super().__init__(model=model, optimizer=optimizer, loss_func=None, *args, **kwargs)  # noqa: B026
        self.metric = metric

    def calculate_train_batch_loss(self, batch):
        outputs = self.model(**batch)

        return {
            "loss": outputs.loss,
            "model_outputs": outputs.logits,
            "batch_size": batch["attention_mask"].size(0),
        }

    def calculate_eval_batch_loss(self, batch):
        with torch.no_grad():
            outputs = self.model(**batch)
        predictions = outputs.logits.argmax(dim=-1)
        self.metric.add_batch(
            predictions=self.gather(predictions),
            references=self.gather(batch["labels"]),
        )
        return {
            "loss": outputs.loss,
            "model_outputs": outputs.logits,
            "batch_size": batch["attention_mask"].size(0),
        }

    def eval_epoch_end(self):
        self.run_history.update_metric("metrics", self.metric.compute())

    def create_scheduler(self):
        return self.create_scheduler_fn(
            optimizer=self.optimizer,
            num_training_steps=len(self._train_dataloader) * self.run_config.num_epochs,
        )


# CHANGED: stand-ins for the downloads ------------------------------------------------------
WORDS = "the a cat dog sat ran on under mat rug big small red blue quickly slowly".split()


def load_dataset():
    """Sentence pairs; label 1 when the second is a paraphrase (here: the same words)."""
    rng = random.Random(0)
    splits = {}
    for split, size in (("train", 256), ("validation", 64)):
        rows = []
        for idx in range(size):
            sentence1 = " ".join(rng.choices(WORDS, k=6))
            label = rng.random() < 0.5
            sentence2 = sentence1 if label else " ".join(rng.choices(WORDS, k=6))
            rows.append(
                {"idx": idx, "sentence1": sentence1, "sentence2": sentence2, "label": int(label)}
            )
        splits[split] = rows
    return splits


def make_tokenizer():
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    tokenizer.train_from_iterator(WORDS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


class AccuracyMetric:
    """The add_batch / compute interface of evaluate's metrics."""

    def __init__(self):
        self.correct, self.total = 0, 0

    def add_batch(self, predictions, references):
        self.correct += (predictions == references).sum().item()
        self.total += len(references)

    def compute(self):
        accuracy, self.correct, self.total = self.correct / self.total, 0, 0
        return {"accuracy": accuracy}


# --------------------------------------------------------------------------------------------


def main(
    lr: float = 2e-5,
    num_epochs: int = 3,
    batch_size: int = 16,
):
    tokenizer = make_tokenizer()  # CHANGED: was AutoTokenizer.from_pretrained("bert-base-cased")
    datasets = load_dataset()  # CHANGED: was load_dataset("glue", "mrpc")
    metric = AccuracyMetric()  # CHANGED: was evaluate.load("glue", "mrpc")

    def tokenize_function(examples):
        # max_length=None => use the model max length (it's actually the default)
        outputs = tokenizer(
            examples["sentence1"],
            examples["sentence2"],
            truncation=True,
            max_length=None,
        )
        return outputs

    # CHANGED: datasets' map / rename_column, done on lists of dicts
    tokenized_datasets = {
        split: [
            {**tokenize_function(row), "labels": row["label"]}  # label renamed to labels
            for row in rows
        ]
        for split, rows in datasets.items()
    }

    # If the batch size is too big we use gradient accumulation
    gradient_accumulation_steps = 1
    if batch_size > MAX_GPU_BATCH_SIZE:
        gradient_accumulation_steps = batch_size // MAX_GPU_BATCH_SIZE
        batch_size = MAX_GPU_BATCH_SIZE

    def collate_fn(examples):
        return tokenizer.pad(examples, padding="longest", return_tensors="pt")

    # Instantiate the model
    # CHANGED: was AutoModelForSequenceClassification.from_pretrained("bert-base-cased", ...)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = BertForSequenceClassification(config)

    # Instantiate optimizer
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=lr)

    # Create an instance of our trainer
    trainer = TransformersTrainer(model=model, optimizer=optimizer, metric=metric)

    # Wrap the scheduler factory function as a higher order function so that it will be created inside the trainer
    lr_scheduler = partial(
        get_linear_schedule_with_warmup,
        num_warmup_steps=100,
    )

    # start training
    # Multiprocessing is handled by dataset, so override num workers
    trainer.train(
        num_epochs=num_epochs,
        train_dataset=tokenized_datasets["train"],
        eval_dataset=tokenized_datasets["validation"],
        per_device_batch_size=batch_size,
        train_dataloader_kwargs={"num_workers": 0},
        eval_dataloader_kwargs={"batch_size": EVAL_BATCH_SIZE, "num_workers": 0},
        create_scheduler_fn=lr_scheduler,
        gradient_accumulation_steps=gradient_accumulation_steps,
        collate_fn=collate_fn,
    )
    return trainer  # CHANGED: returned for the test


if __name__ == "__main__":
    main()
