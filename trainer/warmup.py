"""TF Serving warm-up records for the query tower.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord
file of PredictionLog) when it loads a version, so the first real requests
do not pay for TensorFlow's lazy initialisation. The requests are the ones
the candidate service sends: Predict on the query model's serving signature
with the manifest's warm-up users, alone and as one batch. The trainer
writes them into the staged version, so they are in place before any server
can see it.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from model_store import contract

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# TF Serving reads at most this many records.
MAX_RECORDS = 1000
def warmup_requests(user_ids: Sequence[str]) -> list:
    """The Predict requests to replay: each user alone, then all at once.

    Returns:
      PredictionLog messages.

    Raises:
      ValueError: no users, or more than MAX_RECORDS requests would result.
    """
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not user_ids or len(user_ids) + 1 > MAX_RECORDS:
        raise ValueError(
            f"need 1 to {MAX_RECORDS - 1} warm-up users, got {len(user_ids)}"
        )
    batches = [[u] for u in user_ids]
    if len(user_ids) > 1:
        batches.append(list(user_ids))

    logs = []
    for batch in batches:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = contract.QUERY_MODEL_NAME
        request.model_spec.signature_name = contract.SERVING_SIGNATURE
        tensor = request.inputs[contract.USER_ID_KEY]
        tensor.dtype = types_pb2.DT_STRING
        tensor.tensor_shape.dim.add().size = len(batch)
        tensor.string_val.extend(u.encode("utf-8") for u in batch)
        request.output_filter.append(contract.EMBEDDING_KEY)
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup_requests(
    saved_model_dir: Path, user_ids: Sequence[str]
) -> Path:
    """Writes the warm-up file into one SavedModel directory.

    The file appears whole or not at all (written aside, then renamed).

    Args:
      saved_model_dir: the query tower's version directory.
      user_ids: users to embed while warming up.

    Returns:
      The file written.

    Raises:
      FileNotFoundError: `saved_model_dir` holds no saved_model.pb.
      ValueError: see `warmup_requests`.
    """
    import tensorflow as tf

    saved_model_dir = Path(saved_model_dir)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"{saved_model_dir} is not a SavedModel directory (no "
            "saved_model.pb)"
        )
    records = warmup_requests(user_ids)
    target = saved_model_dir / WARMUP_FILE
    target.parent.mkdir(exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with tf.io.TFRecordWriter(str(partial)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    os.replace(partial, target)
    return target
