"""Train a Hugging Face ``transformers`` model: a tiny BERT classifier built from a config.

    pip install -e ".[examples]"
    python examples/hf_transformer.py

Nothing is downloaded: the model is built from a small ``BertConfig`` (random weights), and
the tokenizer is a word-level ``tokenizers`` tokenizer trained here on the example's own
sentences. The task: is a short made-up review positive or negative? It takes the negation
"not" into account, so the model has to look at more than one word. About 15 seconds on a CPU.

The trainer subclass is the usual pattern for Hugging Face models: batches are dicts, the
model computes its own loss from ``labels``, so there is no ``loss_func``.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from pa_mixins import Trainer

SUBJECTS = ["the film", "this book", "the food", "our stay", "the service", "that song"]
VERBS = ["was", "is", "felt", "seemed"]
POSITIVE = ["great", "wonderful", "lovely", "excellent", "fun", "charming"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "bad", "annoying"]


def make_reviews(num_reviews: int, seed: int) -> list[dict[str, Any]]:
    """Sentences like "the film was not boring" with label 1 (positive) or 0 (negative)."""
    rng = random.Random(seed)
    reviews = []
    for _ in range(num_reviews):
        positive_word = rng.random() < 0.5
        negated = rng.random() < 0.5
        word = rng.choice(POSITIVE if positive_word else NEGATIVE)
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {'not ' if negated else ''}{word}"
        reviews.append({"text": text, "label": int(positive_word != negated)})
    return reviews


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer learnt from ``texts``, wrapped so that it is called like any
    Hugging Face tokenizer (``tokenizer(texts, padding=True, return_tensors="pt")``)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


class TransformersTrainer(Trainer):
    """The model returns its loss when the batch has ``labels``: use it."""

    def calculate_train_batch_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        outputs = self.model(**batch)
        return {
            "loss": outputs.loss,
            "model_outputs": outputs.logits,
            "batch_size": batch["input_ids"].size(0),
        }

    def calculate_eval_batch_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        with torch.no_grad():
            outputs = self.model(**batch)
        self.correct += (outputs.logits.argmax(dim=-1) == batch["labels"]).sum()
        self.seen += batch["labels"].numel()
        return {
            "loss": outputs.loss,
            "model_outputs": outputs.logits,
            "batch_size": batch["input_ids"].size(0),
        }

    def eval_epoch_start(self) -> None:
        super().eval_epoch_start()
        self.correct = torch.zeros((), device=self.device)
        self.seen = torch.zeros((), device=self.device)

    def eval_epoch_end(self) -> None:
        # on several processes each one counted its own share: sum the counts of all
        accuracy = (self.reduce_sum(self.correct) / self.reduce_sum(self.seen)).item()
        self.run_history.update_metric("accuracy", accuracy)
        super().eval_epoch_end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num-reviews", type=int, default=2000)
    args = parser.parse_args()

    train_reviews = make_reviews(args.num_reviews, seed=0)
    eval_reviews = make_reviews(args.num_reviews // 4, seed=1)
    tokenizer = build_tokenizer([review["text"] for review in train_reviews])

    def collate_fn(reviews: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Tokenize a batch, padded to its longest sentence, with the labels the model reads."""
        batch = tokenizer([r["text"] for r in reviews], padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([r["label"] for r in reviews])
        return dict(batch)

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    trainer = TransformersTrainer(
        model,
        loss_func=None,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
    )
    trainer.train(
        train_dataset=train_reviews,  # a list is a dataset: it has a length and items
        eval_dataset=eval_reviews,
        num_epochs=args.epochs,
        per_device_batch_size=32,
        collate_fn=collate_fn,
        seed=0,
    )
    trainer.print(f"Eval accuracy: {trainer.run_history.get_latest_metric('accuracy'):.3f}")


if __name__ == "__main__":
    main()
