# calico-py in one image: etcd, the cluster services (IPAM, policy, BGP) and
# the node (endpoint service, policy agent, BIRD and its renderer). The
# compose file picks the role by command; see docker-compose.yml.
#
# One image rather than one per role: the node's extra Debian packages (bird2,
# iptables, ipset) are ~10 MB of a ~300 MB image, and one image is built,
# cached and pulled into a compose project once instead of twice.
#
# BASE_IMAGE: any Debian 12 based image with python3.11 (python:3.11-slim,
# debian:bookworm, or the image `make base-image` builds with debootstrap,
# which already holds every package below, so that building needs no Debian
# mirror). Build with `--network host` where the engine's own networks have
# no way out (see tools/compose_engine.py). Works with the classic builder and BuildKit.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/calico-py \
    PATH=/opt/calico-py/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian packages, each installed only when what it provides is missing (as
# the Makefile's `deps` does): nothing to fetch on the debootstrap base.
RUN set -e; missing=""; \
    for pair in python3:python3 etcd:etcd-server bird:bird2 ip:iproute2 ping:iputils-ping \
                iptables:iptables ipset:ipset; do \
        command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair#*:}"; \
    done; \
    command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null \
        || missing="$missing python3-venv"; \
    if [ -n "$missing" ]; then \
        echo "Installing Debian packages:$missing"; \
        apt-get update -qq; \
        apt-get install -y -qq --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi

# The Python dependencies, pinned in pyproject.toml, in their own layer: it is
# rebuilt only when they change. grpcio-tools generates the gRPC code below;
# setuptools is the build backend of the editable install. They come from
# build/wheels when it holds wheels (`make compose-up` downloads them there
# on the host, with the host's pip settings: its index, proxy and CA), else
# from the package index.
# (buil[d]/wheel[s]: a pattern that may match nothing, for either builder.)
COPY pyproject.toml buil[d]/wheel[s] /tmp/deps/
RUN python3 -m venv "$VIRTUAL_ENV" \
 && python -c 'import tomllib; p = tomllib.load(open("/tmp/deps/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + [d for d in p["optional-dependencies"]["dev"] \
if d.startswith("grpcio-tools")] + ["setuptools>=68"]))' > /tmp/deps/requirements.txt \
 && if ls /tmp/deps/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /tmp/deps; fi \
 && pip install -q --no-cache-dir "$@" -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps

# The code, and the gRPC code generated from protos/ exactly as `make protos`
# does; the editable install gives `calicoctl` and keeps /app the code that runs
# (the node supervisor starts its children with `python -m ...`); the endpoint
# service runs the CNI plugin's code for forwarded invocations (cni/).
WORKDIR /app
COPY pyproject.toml README.md /app/
COPY protos /app/protos
COPY calicopy /app/calicopy
COPY services /app/services
COPY cli /app/cli
COPY node /app/node
COPY cni /app/cni
COPY docker/calico-node /app/docker/calico-node
RUN python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \
        $(find protos -name '*.proto') \
 && find calico -type d -exec touch {}/__init__.py \; \
 && touch calico/.generated \
 && pip install -q --no-cache-dir --no-deps --no-build-isolation -e . \
        --config-settings editable_mode=compat \
 && chmod 755 docker/calico-node

CMD ["calicoctl", "--help"]
