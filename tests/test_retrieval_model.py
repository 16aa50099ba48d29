"""The shipped towers: features looked up inside them from ids alone,
checked against NumPy references on a hand-made catalogue."""

import numpy as np
import pytest

from trainer import features, model
from trainer.evaluation import UserMovies

USERS = ["u1", "u2", "u3"]
MOVIES = ["10", "20", "30", "40"]
# User rows 0..2, movie rows 0..3: u1 rated 10 and 30, u2 rated 40, u3
# nothing.
SEEN = UserMovies.build(np.array([0, 0, 1]), np.array([0, 2, 3]), 3, 4)


@pytest.fixture(autouse=True)
def _seeded():
    import tf_keras as keras

    keras.utils.set_random_seed(3)


def _query_tower(**kwargs):
    options = {"history": features.HistoryTable.from_matrix(SEEN)}
    options.update(kwargs)
    return model.QueryTower(USERS, 5, len(MOVIES), **options)


def _history_table(tower) -> np.ndarray:
    return tower.history_embedding.embeddings.numpy()


def test_the_query_is_the_mean_of_the_history_and_a_one():
    import tensorflow as tf

    tower = _query_tower(user_embedding=False, item_bias=True)

    out = tower(tf.constant(["u1", "u2", "u3"])).numpy()

    table = _history_table(tower)
    # Lookup row = catalogue row + 1: u1's movies are rows 1 and 3.
    np.testing.assert_allclose(out[0, :4], (table[1] + table[3]) / 2, 1e-6)
    np.testing.assert_allclose(out[1, :4], table[4], 1e-6)
    np.testing.assert_allclose(out[2, :4], 0.0)
    np.testing.assert_allclose(out[:, 4], 1.0)


def test_the_user_embedding_is_added_and_unknown_users_get_a_query():
    import tensorflow as tf

    tower = _query_tower(user_embedding=True)

    out = tower(tf.constant(["u2", "nobody"])).numpy()

    users = tower.user_embedding.embeddings.numpy()
    np.testing.assert_allclose(out[0], users[2] + _history_table(tower)[4])
    # Unknown: the shared out-of-vocabulary row and an empty history.
    np.testing.assert_allclose(out[1], users[0])


def test_leave_out_removes_the_example_movie_from_the_history():
    import tensorflow as tf

    tower = _query_tower(user_embedding=False)
    rows = tower.lookup(tf.constant(["u1", "u1"]))

    out = tower.embed_rows(rows, leave_out=tf.constant([1, 3], tf.int64))

    table = _history_table(tower)
    np.testing.assert_allclose(out.numpy(), table[[3, 1]], 1e-6)


def test_full_history_dropout_leaves_only_the_user_embedding():
    import tensorflow as tf

    tower = _query_tower(user_embedding=True)
    rows = tower.lookup(tf.constant(["u1"]))

    out = tower.embed_rows(rows, dropout=0.999999)

    np.testing.assert_allclose(
        out.numpy(), tower.user_embedding.embeddings.numpy()[[1]]
    )


def test_the_candidate_adds_content_and_a_bias_column():
    import tensorflow as tf

    dataset_features = features.MovieFeatures(
        genres=np.eye(5, 2, -1, dtype=np.float32),
        genre_names=("a", "b"),
        year=np.array([0, 1, 1, 2, 0]),
        years=(1990, 1991),
        title_words=np.array([[0], [1], [0], [1], [0]]),
        words=("night",),
    )
    tower = model.CandidateTower(
        MOVIES, 4, features=dataset_features, item_bias=True
    )

    out = tower(tf.constant(["20", "unknown"])).numpy()

    content = tower.content
    ids = tower.id_embedding.embeddings.numpy()
    genre = content.genre_projection.kernel.numpy()
    years = content.year_embedding.embeddings.numpy()
    # Movie "20" is lookup row 2: genre b, year 1990, no kept title word.
    np.testing.assert_allclose(out[0, :3], ids[2] + genre[1] + years[1], 1e-6)
    np.testing.assert_allclose(out[:, 3], 0.0)  # biases start at zero
    # Unknown ids: row 0, no genres or words, the "no year" embedding.
    np.testing.assert_allclose(out[1, :3], ids[0] + years[0], 1e-6)


def test_the_multinomial_loss_is_the_summed_log_likelihood_per_user():
    import tensorflow as tf

    query = _query_tower(user_embedding=False)
    candidate = model.CandidateTower(MOVIES, 5)
    retrieval = model.RetrievalModel(query, candidate, loss="multinomial")

    loss = retrieval.compute_loss(
        {"user_id": tf.constant(["u1", "u2"])}, training=False
    ).numpy()

    logits = query(tf.constant(["u1", "u2"])).numpy() @ (
        candidate(tf.constant(MOVIES)).numpy().T
    )
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -(log_p[0, 0] + log_p[0, 2] + log_p[1, 3]) / 2
    assert loss == pytest.approx(expected, rel=1e-5)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize(
    "hidden, expected_terms",
    [
        # u1 hides movie 10 and shows 30; u2 hides its only movie, 40, so
        # its query is empty: uniform scores over the four movies.
        ([1.0, 0.0, 1.0], lambda u1, u2: u1[0] + u2[3]),
        # u1 hides both its movies: each weighs 1 / sqrt(2).
        ([1.0, 1.0, 1.0], lambda u1, u2: (u1[0] + u1[2]) / np.sqrt(2) + u2[3]),
    ],
)
def test_the_masked_loss_scores_only_the_hidden_movies(
    monkeypatch, hidden, expected_terms
):
    import tensorflow as tf

    query = _query_tower(user_embedding=False)
    candidate = model.CandidateTower(MOVIES, 5)
    retrieval = model.RetrievalModel(query, candidate, loss="masked")
    # History entries in order: u1's 10 and 30, then u2's 40.
    monkeypatch.setattr(
        retrieval,
        "draw_hidden",
        lambda batch, entry_rows: tf.constant(hidden),
    )

    loss = retrieval.compute_loss(
        {"user_id": tf.constant(["u1", "u2"])}, training=True
    ).numpy()

    movies = candidate(tf.constant(MOVIES)).numpy()
    shown_u1 = [row for row, h in ((1, hidden[0]), (3, hidden[1])) if not h]
    query_u1 = (
        _history_table(query)[shown_u1].mean(axis=0)
        if shown_u1
        else np.zeros(5)
    )
    u1 = _log_softmax(query_u1 @ movies.T)
    u2 = _log_softmax(np.zeros(5) @ movies.T)
    assert loss == pytest.approx(-expected_terms(u1, u2) / 2, rel=1e-5)


@pytest.mark.parametrize("least", [0.2, 0.6])
def test_the_masked_loss_hides_a_share_drawn_per_user(least):
    import tensorflow as tf

    retrieval = model.RetrievalModel(
        _query_tower(), model.CandidateTower(MOVIES, 5), history_dropout=least
    )
    users, movies_each = 400, 300
    entry_rows = tf.repeat(tf.range(users, dtype=tf.int64), movies_each)

    hidden = retrieval.draw_hidden(users, entry_rows).numpy()

    shares = hidden.reshape(users, movies_each).mean(axis=1)
    # Uniform between `least` and 1, blurred by 300 coin flips per user.
    assert shares.min() > least - 0.1
    assert shares.mean() == pytest.approx((1 + least) / 2, abs=0.02)
    assert shares.std() == pytest.approx((1 - least) / np.sqrt(12), abs=0.02)


def test_the_full_softmax_loss_leaves_the_target_out_of_the_query():
    import tensorflow as tf

    query = _query_tower(user_embedding=False)
    candidate = model.CandidateTower(MOVIES, 5)
    retrieval = model.RetrievalModel(query, candidate, loss="full_softmax")

    loss = retrieval.compute_loss(
        {"user_id": tf.constant(["u1"]), "movie_id": tf.constant(["10"])}
    ).numpy()

    # u1 without movie 10 (row 1) is its other movie, row 3.
    logits = _history_table(query)[3] @ candidate(tf.constant(MOVIES)).numpy().T
    expected = np.log(np.exp(logits).sum()) - logits[0]
    assert loss == pytest.approx(expected, rel=1e-5)


def test_a_query_tower_needs_an_input():
    with pytest.raises(ValueError, match="got neither"):
        model.QueryTower(USERS, 4, 4, history=None, user_embedding=False)


def test_the_history_must_cover_the_vocabulary():
    history = features.HistoryTable.from_matrix(
        UserMovies.build(np.array([0]), np.array([0]), 2, 4)
    )

    with pytest.raises(ValueError, match="history has 2 users"):
        model.QueryTower(USERS, 4, 4, history=history)


@pytest.mark.parametrize("loss", ["masked", "multinomial"])
def test_the_per_user_losses_need_a_history(loss):
    query = model.QueryTower(USERS, 4, 4, history=None)

    with pytest.raises(ValueError, match=f"the {loss} loss reads"):
        model.RetrievalModel(query, model.CandidateTower(MOVIES, 4), loss=loss)


def test_an_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        model.RetrievalModel(
            _query_tower(), model.CandidateTower(MOVIES, 5), loss="hinge"
        )


def test_the_query_tower_round_trips_through_a_saved_model(tmp_path):
    import tensorflow as tf

    from trainer import export

    tower = _query_tower(user_embedding=True, item_bias=True)
    ids = ["u1", "u2", "u3", "nobody"]

    export.save_query_tower(tower, tmp_path / "query")
    served = export.load_signature(tmp_path / "query")(
        user_id=tf.constant(ids)
    )["embedding"].numpy()

    np.testing.assert_allclose(served, export.embed(tower, ids), atol=1e-6)
