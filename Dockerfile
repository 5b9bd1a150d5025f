# sluice gateway image: compiled hot path, non-root, config mounted at /etc/sluice/config.yaml.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ext
COPY src src
# The runtime and its optional extras (sluice.config.extras), never the dev ones: an image serves whatever
# config is mounted, PostgreSQL store, tracing and JWT included.  --build-arg EXTRAS= builds the smallest image.
ARG EXTRAS=postgres,otel,jwt
RUN SLUICE_REQUIRE_EXTENSIONS=1 pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
RUN useradd --system --uid 10001 sluice
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples /etc/sluice/examples
USER sluice
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["sluice"]
CMD ["serve", "--config", "/etc/sluice/examples/quickstart.yaml", "--host", "0.0.0.0", "--port", "8080"]
