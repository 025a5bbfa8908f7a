# lifewatch: one container per node. Run with --pid=host --net=host and the capabilities
# listed in README.md ("Container").
FROM python:3.11-slim-bookworm AS build
# The kernel readers' compiled module (app/netlink/_batch.c) needs a C compiler; the image
# that runs it does not.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -c 'import sys, zipfile, glob; \
w = glob.glob("/wheels/lifewatch-*.whl")[0]; \
sys.exit(not any(n.startswith("app/netlink/_batch.") and n.endswith(".so") \
                 for n in zipfile.ZipFile(w).namelist()))'

FROM python:3.11-slim-bookworm
WORKDIR /opt/lifewatch
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels /root/.cache

# The API listens on 127.0.0.1:7878 (with --net=host, the host's loopback). To serve other
# nodes, set LIFEWATCH_HOST=0.0.0.0 and put the port behind the cluster's network policy.
EXPOSE 7878
ENTRYPOINT ["lifewatch"]
CMD ["serve"]
