# lifewatch: one container per node. Run with --pid=host --net=host and the capabilities
# listed in README.md ("Container").
FROM python:3.11-slim-bookworm

WORKDIR /opt/lifewatch
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir . && rm -rf /root/.cache

# The API listens on 127.0.0.1:7878 (with --net=host, the host's loopback). To serve other
# nodes, set LIFEWATCH_HOST=0.0.0.0 and put the port behind the cluster's network policy.
EXPOSE 7878
ENTRYPOINT ["lifewatch"]
CMD ["serve"]
