"""The two-tower retrieval models.

A query tower maps a user id to an embedding and a candidate tower maps a
movie id to one; their dot product scores the pair. Two models share that
contract:

* `TwoTowerModel`, the TensorFlow Recommenders tutorial's model: one
  embedding per user id and per movie id, trained with in-batch softmax.
  Kept as the baseline the benchmark reproduces.
* `RetrievalModel`, the model the project ships: the query tower embeds the
  user by the mean embedding of the movies they rated in training (and,
  optionally, an embedding of their id), the candidate tower adds genre,
  release-year and title-word embeddings to the movie's own plus a
  popularity bias, and training scores each user against the whole
  catalogue (or, as the tutorial does, against the batch). Every feature
  is a table inside its tower, indexed by the tower's id lookup, so the
  towers still take nothing but user or movie ids, and an unknown id
  still gets an embedding.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from trainer.features import HistoryTable, MovieFeatures

TOP_KS = (1, 5, 10, 50, 100)

MASKED = "masked"
MULTINOMIAL = "multinomial"
FULL_SOFTMAX = "full_softmax"
IN_BATCH = "in_batch"
LOSSES = (MASKED, MULTINOMIAL, FULL_SOFTMAX, IN_BATCH)
# The losses whose examples are users rather than ratings.
PER_USER_LOSSES = (MASKED, MULTINOMIAL)


def id_tower(
    vocabulary: Sequence[str], embedding_dim: int, name: str
) -> keras.Model:
    """An embedding table keyed by string id.

    Args:
      vocabulary: every known id, as strings.
      embedding_dim: output width.
      name: the Keras model's name.

    Returns:
      A model mapping string ids `[batch]` to float32 `[batch, embedding_dim]`.
      Ids outside the vocabulary share one extra row.
    """
    return keras.Sequential(
        [
            keras.layers.StringLookup(vocabulary=list(vocabulary)),
            keras.layers.Embedding(len(vocabulary) + 1, embedding_dim),
        ],
        name=name,
    )


class TwoTowerModel(tfrs.Model):
    """User id and movie id towers trained for retrieval.

    Batches are dicts with string tensors `user_id` and `movie_id` of shape
    `[batch]`.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        movie_ids: Sequence[str],
        embedding_dim: int,
    ):
        super().__init__()
        self.query_tower = id_tower(user_ids, embedding_dim, "query_tower")
        self.candidate_tower = id_tower(
            movie_ids, embedding_dim, "candidate_tower"
        )
        candidates = tf.data.Dataset.from_tensor_slices(list(movie_ids))
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(
                candidates=candidates.batch(512).map(self.candidate_tower),
                ks=TOP_KS,
            )
        )

    def compute_loss(self, features, training=False):
        query = self.query_tower(features["user_id"])
        candidate = self.candidate_tower(features["movie_id"])
        # Top-k over the whole catalogue per batch is the expensive part of a
        # step; it is only wanted when evaluating, not while fitting.
        return self.task(
            query,
            candidate,
            compute_metrics=not training,
            compute_batch_metrics=not training,
        )


def _constant(values: np.ndarray, name: str) -> tf.Variable:
    # A non-trainable variable rather than a graph constant: a SavedModel's
    # graph is one protocol buffer, capped at 2 GB, and the history of the
    # largest releases (tens of millions of ratings) would not fit in it.
    return tf.Variable(values, trainable=False, name=name)


def _masked_mean(vectors: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over axis 1 of `vectors` [b, n, d] where `mask` [b, n] is true;
    zeros for a row with nothing kept."""
    weights = tf.cast(mask, vectors.dtype)
    total = tf.einsum("bnd,bn->bd", vectors, weights)
    count = tf.reduce_sum(weights, axis=1, keepdims=True)
    return total / tf.maximum(count, 1.0)


class MovieContent(keras.layers.Layer):
    """Embeds movies by their content: a projection of the genres plus
    embeddings of the release year and of the mean title word.

    Maps movie lookup rows int64 `[batch]` to float32 `[batch, width]`.
    Row 0, an unknown movie, has no genres or title words and gets the
    embedding of "no release year", as do movies whose title has none.
    """

    def __init__(self, features: MovieFeatures, width: int, **kwargs):
        super().__init__(**kwargs)
        self.genres = _constant(features.genres, "genres")
        self.genre_projection = keras.layers.Dense(
            width, use_bias=False, name="genre_projection"
        )
        self.year = _constant(features.year, "year")
        self.year_embedding = keras.layers.Embedding(
            len(features.years) + 1, width, name="year_embedding"
        )
        self.title_words = _constant(features.title_words, "title_words")
        self.word_embedding = keras.layers.Embedding(
            len(features.words) + 1, width, name="word_embedding"
        )

    def call(self, rows):
        words = tf.gather(self.title_words, rows)
        return (
            self.genre_projection(tf.gather(self.genres, rows))
            + self.year_embedding(tf.gather(self.year, rows))
            + _masked_mean(self.word_embedding(words), words > 0)
        )


class CandidateTower(keras.Model):
    """Movie id strings `[batch]` to float32 embeddings `[batch, dim]`.

    The embedding is the movie's own embedding plus, when features are
    given, its `MovieContent`. With `item_bias`, the last column is a
    learned per-movie bias instead (the query tower puts a 1 there), so the
    dot product can favour movies many users watch. Unknown ids share
    lookup row 0.
    """

    def __init__(
        self,
        movie_ids: Sequence[str],
        embedding_dim: int,
        features: MovieFeatures | None = None,
        item_bias: bool = False,
        name: str = "candidate_tower",
    ):
        super().__init__(name=name)
        self.num_movies = len(movie_ids)
        width = embedding_dim - 1 if item_bias else embedding_dim
        self.lookup = keras.layers.StringLookup(vocabulary=list(movie_ids))
        self.id_embedding = keras.layers.Embedding(
            self.num_movies + 1, width, name="movie_embedding"
        )
        self.content = (
            None
            if features is None
            else MovieContent(features, width, name="movie_content")
        )
        self.bias = (
            keras.layers.Embedding(
                self.num_movies + 1,
                1,
                embeddings_initializer="zeros",
                name="movie_bias",
            )
            if item_bias
            else None
        )

    def call(self, movie_ids):
        return self.embed_rows(self.lookup(movie_ids))

    def embed_rows(self, rows):
        """Embeddings of lookup rows int64 `[batch]` (0 unknown, i + 1 for
        the i-th movie) as float32 `[batch, dim]`."""
        out = self.id_embedding(rows)
        if self.content is not None:
            out += self.content(rows)
        if self.bias is not None:
            out = tf.concat([out, self.bias(rows)], axis=1)
        return out

    def embed_catalogue(self):
        """float32 `[num_movies, dim]`, row i the i-th movie's embedding."""
        rows = tf.range(1, self.num_movies + 1, dtype=tf.int64)
        return self.embed_rows(rows)


class QueryTower(keras.Model):
    """User id strings `[batch]` to float32 embeddings `[batch, dim]`.

    The embedding is the sum of the user's own embedding (if enabled) and
    the mean embedding of the movies in the user's training history (if
    given), the history read from a table inside the tower. With
    `item_bias`, a last column of ones meets the candidates' biases. An
    unknown user gets the shared out-of-vocabulary row and an empty
    history, so with history alone its query scores movies by bias only.

    Raises:
      ValueError: neither the user embedding nor a history is asked for, or
        the history covers other users than the vocabulary.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        embedding_dim: int,
        num_movies: int,
        history: HistoryTable | None = None,
        user_embedding: bool = True,
        item_bias: bool = False,
        name: str = "query_tower",
    ):
        super().__init__(name=name)
        if history is None and not user_embedding:
            raise ValueError(
                "the query tower needs the user's embedding, history, or "
                "both; got neither"
            )
        self.item_bias = item_bias
        width = embedding_dim - 1 if item_bias else embedding_dim
        self.lookup = keras.layers.StringLookup(vocabulary=list(user_ids))
        self.user_embedding = (
            keras.layers.Embedding(
                len(user_ids) + 1, width, name="user_embedding"
            )
            if user_embedding
            else None
        )
        self.use_history = history is not None
        if history is not None:
            if len(history.row_splits) != len(user_ids) + 2:
                raise ValueError(
                    f"history has {len(history.row_splits) - 2} users but "
                    f"the vocabulary {len(user_ids)}; build both from the "
                    "same Interactions"
                )
            self.row_splits = _constant(history.row_splits, "row_splits")
            self.history_movies = _constant(history.movies, "history")
            self.history_embedding = keras.layers.Embedding(
                num_movies + 1, width, name="history_embedding"
            )
            # Built now: the table is read directly, never through a call.
            self.history_embedding.build((None,))

    def call(self, user_ids):
        return self.embed_rows(self.lookup(user_ids))

    def embed_rows(self, rows, leave_out=None, dropout=0.0):
        """Embeddings of lookup rows int64 `[batch]` as float32
        `[batch, dim]`.

        Args:
          rows: user lookup rows, 0 for an unknown user.
          leave_out: optional int64 `[batch]` movie lookup rows to drop from
            each user's history: the movie a training example is about, so
            the tower learns to predict a movie from the user's other
            movies rather than to find it in their history.
          dropout: share of each history dropped at random (training only).
        """
        if not self.use_history:
            return self.embed_with_history(rows, None, None, None)
        entry_rows, movies = self.history_entries(rows)
        shown = tf.ones_like(movies, dtype=tf.float32)
        if leave_out is not None:
            shown *= tf.cast(movies != tf.gather(leave_out, entry_rows), tf.float32)
        if dropout > 0.0:
            shown *= tf.cast(
                tf.random.uniform(tf.shape(shown)) >= dropout, tf.float32
            )
        return self.embed_with_history(rows, entry_rows, movies, shown)

    def embed_with_history(self, rows, entry_rows, movies, shown):
        """As `embed_rows`, with the histories given: entry i is movie
        lookup row `movies[i]` of user `rows[entry_rows[i]]` (as from
        `history_entries`), and counts only where float32 `shown[i]` is 1.
        All three are None for a tower without a history."""
        parts = []
        if self.user_embedding is not None:
            parts.append(self.user_embedding(rows))
        if self.use_history:
            parts.append(self._history_mean(rows, entry_rows, movies, shown))
        out = tf.add_n(parts)
        if self.item_bias:
            out = tf.concat([out, tf.ones_like(out[:, :1])], axis=1)
        return out

    def history_entries(self, rows):
        """The users' training movies as (entry_rows, movies): int64
        `[entries]` each, entry i being movie lookup row `movies[i]` in the
        history of `rows[entry_rows[i]]`."""
        starts = tf.gather(self.row_splits, rows)
        ends = tf.gather(self.row_splits, rows + 1)
        positions = tf.ragged.range(starts, ends)
        movies = tf.gather(self.history_movies, positions.flat_values)
        return positions.value_rowids(), movies

    def _history_mean(self, rows, entry_rows, movies, shown):
        table = self.history_embedding.embeddings
        weights = tf.cast(shown, table.dtype)

        # The batch's histories as a sparse [batch, movies] 0/1 matrix times
        # the table: its gradient is one dense table-sized update, where
        # gathering a row per history entry would hand the optimiser tens of
        # thousands of sparse rows to de-duplicate every step (3x slower).
        batch = tf.shape(rows, out_type=tf.int64)[0]
        histories = tf.sparse.SparseTensor(
            tf.stack([entry_rows, movies], axis=1),
            weights,
            tf.stack([batch, table.shape[0]]),
        )
        total = tf.sparse.sparse_dense_matmul(histories, table)
        count = tf.math.unsorted_segment_sum(weights, entry_rows, batch)
        return total / tf.maximum(count, 1.0)[:, None]


class RetrievalModel(tfrs.Model):
    """`QueryTower` and `CandidateTower` trained for retrieval.

    With the "masked" and "multinomial" losses, batches are dicts with a
    string tensor `user_id` `[batch]` of users with a training history;
    with the others,
    dicts with string tensors `user_id` and `movie_id` `[batch]`, each pair
    a training rating.

    Args:
      query_tower: the user side.
      candidate_tower: the movie side.
      loss: "masked": each example is a user; a random share of their
        history, drawn per user between `history_dropout` and 1, is hidden,
        the query is built from the rest and scored against the whole
        catalogue, and the log-likelihood of the hidden movies is
        maximised, each user's weighted by one over the square root of
        their number. "multinomial": each example is a user, whose query (built from
        a random part of their history) is scored against the whole
        catalogue, and the log-likelihood of all their training movies is
        maximised (Liang et al.'s Mult-DAE, WWW 2018). "full_softmax":
        each example is a rating, its user's query built from the rest of
        their history and scored against the whole catalogue.
        "in_batch": as "full_softmax", but only against the batch's other
        movies, as the tutorial does.
      temperature: logits are divided by it.
      movie_frequency: float32 [num_movies + 1], each lookup row's share of
        the training ratings; with "in_batch", given to correct the logits
        for how often a movie appears as a negative (logQ correction).
      remove_accidental_hits: with "in_batch", do not count another pair
        of the batch with the same movie as a negative.
      history_dropout: share of each user's history hidden from the query
        tower in a training example; with "masked", the least share.

    Raises:
      ValueError: an unknown loss, or a per-user loss without a history.
    """

    def __init__(
        self,
        query_tower: QueryTower,
        candidate_tower: CandidateTower,
        loss: str = MASKED,
        temperature: float = 1.0,
        movie_frequency: np.ndarray | None = None,
        remove_accidental_hits: bool = False,
        history_dropout: float = 0.0,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        if loss in PER_USER_LOSSES and not query_tower.use_history:
            raise ValueError(
                f"the {loss} loss reads each user's movies from the "
                "query tower's history; build the tower with a history"
            )
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.loss_kind = loss
        self.temperature = temperature
        self.movie_frequency = (
            None
            if movie_frequency is None
            else tf.constant(movie_frequency, tf.float32)
        )
        self.remove_accidental_hits = remove_accidental_hits
        self.history_dropout = history_dropout
        self.task = tfrs.tasks.Retrieval(
            temperature=temperature,
            remove_accidental_hits=remove_accidental_hits,
        )

    def compute_loss(self, features, training=False):
        users = self.query_tower.lookup(features["user_id"])
        dropout = self.history_dropout if training else 0.0
        if self.loss_kind == MASKED:
            return self._masked_loss(users)
        if self.loss_kind == MULTINOMIAL:
            return self._multinomial_loss(users, dropout)

        movies = self.candidate_tower.lookup(features["movie_id"])
        query = self.query_tower.embed_rows(
            users, leave_out=movies, dropout=dropout
        )
        if self.loss_kind == FULL_SOFTMAX:
            # Lookup row i + 1 is catalogue column i.
            return tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=movies - 1, logits=self._catalogue_logits(query)
                )
            )

        candidates = self.candidate_tower.embed_rows(movies)
        return self.task(
            query,
            candidates,
            candidate_sampling_probability=(
                None
                if self.movie_frequency is None
                else tf.gather(self.movie_frequency, movies)
            ),
            candidate_ids=movies if self.remove_accidental_hits else None,
            compute_metrics=False,
            compute_batch_metrics=False,
        )

    def _catalogue_logits(self, query):
        catalogue = self.candidate_tower.embed_catalogue()
        return tf.matmul(query, catalogue, transpose_b=True) / self.temperature

    def _multinomial_loss(self, users, dropout):
        query = self.query_tower.embed_rows(users, dropout=dropout)
        log_probabilities = tf.nn.log_softmax(self._catalogue_logits(query))
        rows, movies = self.query_tower.history_entries(users)
        # Summed over each user's movies, as Mult-DAE does, so a user counts
        # in proportion to their ratings, as in the per-rating losses.
        picked = tf.gather_nd(
            log_probabilities, tf.stack([rows, movies - 1], axis=1)
        )
        return -tf.reduce_sum(picked) / tf.cast(tf.shape(users)[0], tf.float32)

    def _masked_loss(self, users):
        rows, movies = self.query_tower.history_entries(users)
        hidden = self.draw_hidden(tf.shape(users)[0], rows)
        query = self.query_tower.embed_with_history(
            users, rows, movies, 1.0 - hidden
        )
        log_probabilities = tf.nn.log_softmax(self._catalogue_logits(query))
        picked = tf.gather_nd(
            log_probabilities, tf.stack([rows, movies - 1], axis=1)
        )
        # Only hidden movies are targets: a shown movie is the easy answer,
        # and rewarding it teaches the towers to hand a user's history
        # back, which serving filters out and the tutorial protocol counts
        # as misses. The shown ones stay in the softmax as negatives.
        # Each user's hidden movies are weighted by 1 / sqrt(their number),
        # between Mult-DAE's per-movie sum, which lets the heavily hidden
        # examples of heavy users dominate (clearly worse on validation),
        # and a per-user mean, which did no better than this.
        batch = tf.shape(users, out_type=tf.int64)[0]
        num_hidden = tf.math.unsorted_segment_sum(hidden, rows, batch)
        weights = hidden * tf.gather(
            tf.math.rsqrt(tf.maximum(num_hidden, 1.0)), rows
        )
        return -tf.reduce_sum(picked * weights) / tf.cast(batch, tf.float32)

    def draw_hidden(self, batch, entry_rows):
        """float32 `[entries]`, 1 where a history entry is hidden from the
        query in the "masked" loss: each of the `batch` users hides each of
        their movies with a probability drawn for them uniformly between
        `history_dropout` and 1."""
        # Each user hides a different share: a query built from a few of a
        # user's movies and one built from nearly all are both asked at
        # serving time (a new user, a long-standing one). Hiding the whole
        # history leaves only the popularity bias, which trains the query
        # of a user with no history at all.
        share = tf.random.uniform(
            [batch], minval=self.history_dropout, maxval=1.0
        )
        draws = tf.random.uniform(tf.shape(entry_rows))
        return tf.cast(draws < tf.gather(share, entry_rows), tf.float32)
