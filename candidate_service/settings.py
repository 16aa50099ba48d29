"""The candidate service's settings: every default in one place.

Kept free of heavy imports so that `--help` answers at once.
"""

import dataclasses
import typing
from pathlib import Path

if typing.TYPE_CHECKING:
    from serving_common.server import ServerTls


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the candidate service runs.

    Attributes:
      address: host:port to listen on; port 0 binds a free port.
      models_dir: the trainer's models directory.
      query_server: host:port of the query server (TF Serving API).
      query_timeout_s: deadline of each call to the query server.
      poll_s: how often to look for a newer version and to check that the
        query server still answers.
      max_in_flight: requests handled at once before new ones are refused
        with RESOURCE_EXHAUSTED.
      max_batch: most concurrent Retrieve calls sent to the query server
        as one batch.
      tls: serve TLS only, with this certificate and key; None for
        plaintext.
      query_server_ca: PEM certificates to trust for the query server; when
        set, the query server is called over TLS, else in plaintext.
    """

    address: str = "0.0.0.0:50051"
    models_dir: Path = Path("build/models")
    query_server: str = "localhost:8500"
    query_timeout_s: float = 1.0
    poll_s: float = 2.0
    max_in_flight: int = 64
    max_batch: int = 64
    tls: "ServerTls | None" = None
    query_server_ca: Path | None = None
