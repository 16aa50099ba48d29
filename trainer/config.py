"""Training settings: every default in one place.

The defaults are the model the project ships, chosen on validation by the
ablation in `bench/quality.py` (recorded in bench/results/quality.json).
`TrainConfig.tutorial()` is the TensorFlow Recommenders tutorial's model,
kept as a baseline.
"""

import dataclasses

# Which model `fit` builds: the tutorial's id-only towers, or the towers
# with user history and movie features.
TUTORIAL = "tutorial"
FEATURES = "features"
MODELS = (TUTORIAL, FEATURES)
OPTIMIZERS = ("adam", "adagrad")
LOSSES = ("masked", "multinomial", "full_softmax", "in_batch")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
      embedding_dim: width of both towers' output embeddings.
      epochs: passes over the training data (over the ratings, or over the
        users for the per-user losses); with early stopping, the most
        that are tried.
      batch_size: examples per step (ratings, or users for the per-user
        losses).
      learning_rate: the optimiser's learning rate.
      seed: seeds the split, the weights and the shuffle order.
      test_fraction: share of ratings held out for the test metrics.
      model: "features" (the shipped towers) or "tutorial" (one embedding
        per id on each side, in-batch softmax; the settings below from
        `user_embedding` on do not apply to it).
      optimizer: "adam" or "adagrad".
      weight_decay: Adam's decoupled weight decay (0 for none).
      validation_fraction: share of the training ratings held out to pick
        the number of epochs when `early_stopping_patience` is set.
      early_stopping_patience: stop after this many epochs without a better
        validation Recall@10, then refit on all training ratings for the
        best number of epochs; 0 trains for exactly `epochs`.
      user_embedding: the query tower has an embedding per user id.
      history: the query tower adds the mean embedding of the user's
        training movies.
      history_dropout: share of a user's history hidden from the query
        tower in each training example; with the "masked" loss, the least
        share (each user's is drawn between it and 1).
      movie_features: the candidate tower adds genre, release-year and
        title-word embeddings.
      item_bias: one output column is a learned per-movie bias (1 on the
        query side).
      loss: "masked" (per user, the hidden part of their history against
        every movie), "multinomial" (per user, all their movies against
        every movie), "full_softmax"
        (per rating, against every movie) or "in_batch" (per rating,
        against the batch's other movies); see `model.RetrievalModel`.
      temperature: logits are divided by it.
      logq_correction: with "in_batch", subtract the log of each movie's
        sampling probability from its logit.
      remove_accidental_hits: with "in_batch", a batch's other ratings of
        the same movie are not negatives.
      distribution: "none" (one device), "mirrored" (every local GPU, or
        every logical CPU device when there is no GPU) or "multi_worker"
        (every host named in TF_CONFIG); see `trainer.distribute`.
        `batch_size` is per replica.
    """

    embedding_dim: int = 128
    epochs: int = 150
    batch_size: int = 64
    learning_rate: float = 0.003
    seed: int = 42
    test_fraction: float = 0.2
    model: str = FEATURES
    optimizer: str = "adam"
    weight_decay: float = 0.0
    validation_fraction: float = 0.1
    early_stopping_patience: int = 30
    user_embedding: bool = False
    history: bool = True
    history_dropout: float = 0.2
    movie_features: bool = True
    item_bias: bool = True
    loss: str = "masked"
    temperature: float = 1.0
    logq_correction: bool = False
    remove_accidental_hits: bool = False
    distribution: str = "none"

    def __post_init__(self):
        for name in ("embedding_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("test_fraction", "validation_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(
                    f"{name} must be between 0 and 1 (exclusive), got {value}"
                )
        for name in ("learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"{name} must be positive, got {getattr(self, name)}"
                )
        if self.weight_decay < 0 or self.early_stopping_patience < 0:
            raise ValueError(
                "weight_decay and early_stopping_patience must not be "
                f"negative, got {self.weight_decay} and "
                f"{self.early_stopping_patience}"
            )
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(
                f"history_dropout must be in [0, 1), got {self.history_dropout}"
            )
        for name, allowed in (
            ("model", MODELS),
            ("optimizer", OPTIMIZERS),
            ("loss", LOSSES),
            ("distribution", DISTRIBUTIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {allowed}, got "
                    f"{getattr(self, name)!r}"
                )
        if self.model == FEATURES:
            if not (self.user_embedding or self.history):
                raise ValueError(
                    "the query tower needs user_embedding, history or both"
                )
            if self.loss in ("masked", "multinomial") and not self.history:
                raise ValueError(
                    f"the {self.loss} loss reads each user's movies from "
                    "their history; set history=True or another loss"
                )
            if self.item_bias and self.embedding_dim < 2:
                raise ValueError(
                    "item_bias takes one of the embedding's columns, so "
                    f"embedding_dim must be at least 2, got "
                    f"{self.embedding_dim}"
                )

    @classmethod
    def tutorial(cls, seed: int = 42) -> "TrainConfig":
        """The TensorFlow Recommenders basic retrieval tutorial's settings:
        id embeddings of 32, Adagrad at 0.1, 3 epochs of batch 8192."""
        return cls(
            model=TUTORIAL,
            embedding_dim=32,
            epochs=3,
            batch_size=8192,
            learning_rate=0.1,
            optimizer="adagrad",
            early_stopping_patience=0,
            seed=seed,
        )
