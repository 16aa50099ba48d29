# One image for the trainer, the candidate service and the load test. The
# query tower is served by the official tensorflow/serving image (see
# docker-compose.yml).

# Build: install the pinned dependencies into a virtualenv and generate the
# gRPC stubs, then drop what only building needed.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY trainer trainer
COPY query_service query_service
COPY candidate_service candidate_service
COPY model_store model_store
COPY serving_common serving_common
COPY protos protos
COPY bench bench
COPY deploy deploy
RUN python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir -c constraints.txt . \
 && /venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=. \
      --grpc_python_out=. protos/movie_retrieval/v1/retrieval_service.proto \
 && /venv/bin/pip uninstall --yes movie-retrieval grpcio-tools

# Run: the virtualenv and the sources only; no compiler, no protoc, no pip
# cache. The code runs from /app (PYTHONPATH), not from site-packages.
FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 app \
 && mkdir /models /cache \
 && chown app:app /models /cache
COPY --from=build /venv /venv
COPY --from=build /src /app
WORKDIR /app
# Named volumes mounted on /models and /cache start out owned by app, as
# these directories are, so the non-root trainer can write to them.
ENV PATH=/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 MODELS_DIR=/models
USER app
EXPOSE 50051 9102
CMD ["python", "-m", "candidate_service", "--models-dir", "/models", \
     "--query-server", "tfserving:8500"]
