"""Names the trainer exports under and the services call by.

TF Serving addresses a model by name, version and signature, and a signature's
tensors by key; all four are fixed here so the exporter and every client agree.
"""

QUERY_MODEL_NAME = "query"
SERVING_SIGNATURE = "serving_default"
USER_ID_KEY = "user_id"
EMBEDDING_KEY = "embedding"
