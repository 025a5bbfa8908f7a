# lifewatch: one container per node. Run with --pid=host --net=host and the capabilities
# listed in README.md ("Container").
FROM python:3.11-slim-bookworm

WORKDIR /opt/lifewatch
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir . && rm -rf /root/.cache

ENV LIFEWATCH_HOST=0.0.0.0 \
    LIFEWATCH_PORT=7878
EXPOSE 7878
ENTRYPOINT ["lifewatch"]
CMD ["serve"]
