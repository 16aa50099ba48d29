"""Training settings: every default in one place."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
      embedding_dim: width of both towers' output embeddings.
      epochs: passes over the training ratings.
      batch_size: ratings per step; the other positives in a batch are the
        negatives of each pair, so larger batches mean harder training.
      learning_rate: Adagrad learning rate.
      seed: seeds the split, the weights and the shuffle order.
      test_fraction: share of ratings held out for the test metrics.
    """

    embedding_dim: int = 32
    epochs: int = 3
    batch_size: int = 8192
    learning_rate: float = 0.1
    seed: int = 42
    test_fraction: float = 0.2

    def __post_init__(self):
        for name in ("embedding_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                "test_fraction must be between 0 and 1 (exclusive), got "
                f"{self.test_fraction}"
            )
        if self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}"
            )
