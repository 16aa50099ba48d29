# One image for the trainer and the candidate service. The query tower is
# served by the official tensorflow/serving image (see docker-compose.yml).

FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY trainer trainer
COPY query_service query_service
COPY candidate_service candidate_service
COPY model_store model_store
COPY serving_common serving_common
COPY protos protos
RUN python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir -c constraints.txt . \
 && /venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=. \
      --grpc_python_out=. protos/movie_retrieval/v1/retrieval_service.proto

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 app
COPY --from=build /venv /venv
COPY --from=build /src /app
WORKDIR /app
ENV PATH=/venv/bin:$PATH TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
USER app
EXPOSE 50051
CMD ["python", "-m", "candidate_service", "--models-dir", "/models", \
     "--query-server", "tfserving:8500"]
