# calico-py: every target a developer, CI or `make demo` needs.
# Run as root on Debian. Targets are idempotent.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STATE_DIR ?= $(CURDIR)/.state
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := calico/.generated

export STATE_DIR

.PHONY: install deps venv protos up down demo demo-down demo-xsubnet test test-unit chaos bench \
	bench-scale clean \
	base-image compose-up compose-down cni-install

install: deps venv

# The venv and the generated code: all that the unit tests need (no root).
venv: $(GEN_STAMP) $(VENV)/.installed

# Debian packages, each installed only when the command it provides is missing
# (a path for one with no command on PATH: the reference CNI plugins).
DEB_COMMANDS := etcd:etcd-server bird:bird2 ip:iproute2 ping:iputils-ping \
	iptables:iptables ipset:ipset conntrack:conntrack \
	busybox:busybox-static dockerd:docker.io iperf3:iperf3 \
	docker-compose:docker-compose debootstrap:debootstrap \
	/usr/lib/cni/ptp:containernetworking-plugins
deps:
	@missing=""; for pair in $(DEB_COMMANDS); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The code generator comes first, so calico/ exists when the project is installed.
$(VENV)/.tools: pyproject.toml | $(PY)
	$(PY) -m pip install -q "$$(grep -o 'grpcio-tools==[0-9.]*' pyproject.toml)"
	touch $@

protos: $(GEN_STAMP)

# Generated code lands in calico/ (the proto package path); never edit it.
$(GEN_STAMP): $(PROTOS) $(VENV)/.tools
	rm -rf calico
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	find calico -type d -exec touch {}/__init__.py \;
	touch $@

$(VENV)/.installed: pyproject.toml | $(GEN_STAMP)
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# etcd and two replicas of each service; `make up ETCD_MEMBERS=3` for a
# 3-member etcd (tools/stack.py).
up: install
	$(PY) -m tools.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m tools.stack down; fi

demo: install
	$(PY) -m tools.demo

# Hosts on two subnets: multi-hop BGP, then IP-in-IP across a plain router.
demo-xsubnet: install
	$(PY) -m tools.demo_xsubnet

demo-down: install
	$(PY) -m tools.demo --down

# The docker-compose stack. Engine: DOCKER_HOST, else the system's, else a
# private one (started by compose-up, stopped by compose-down); base image:
# BASE_IMAGE, else python:3.11-slim if present, else base-image's (debootstrap).
base-image: deps
	python3 -m tools.compose base-image

compose-up: deps | $(PY)
	$(PY) -m tools.compose up

compose-down:
	python3 -m tools.compose down

# The CNI plugins calico and calico-ipam, where runtimes look for plugins:
# links to the launchers in cni/bin, which run this checkout with its .venv.
CNI_BIN_DIR ?= /opt/cni/bin
cni-install: install
	install -d $(CNI_BIN_DIR)
	ln -sfn $(CURDIR)/cni/bin/calico $(CURDIR)/cni/bin/calico-ipam $(CNI_BIN_DIR)/

test: install
	$(VENV)/bin/pytest -q --durations=20 tests

# The chaos test for longer than make test's short run (tests/system/test_chaos.py).
CHAOS_SECONDS ?= 300
CHAOS_SEED ?= 1313
chaos: install
	CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) \
		$(VENV)/bin/pytest -q -s -p no:cacheprovider tests/system/test_chaos.py

# The fast tier: no root, no etcd, BIRD, Docker or kernel changes.
test-unit: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

bench: install
	$(PY) bench/ipam.py
	$(PY) bench/endpoint.py
	$(PY) bench/policy.py
	$(PY) bench/idle.py
	$(PY) bench/bgp.py
	$(PY) bench/docker.py
	$(PY) bench/cni.py
	$(PY) bench/ha.py
	$(PY) bench/xsubnet.py
	$(PY) bench/drops.py
	$(PY) bench/footprint.py
	$(PY) bench/scale.py --hosts=10

# The scale benchmark's full sizes (heavy: 50 hosts, 1,000 workloads).
bench-scale: install
	$(PY) bench/scale.py --hosts=10,25,50

clean: down
	rm -rf $(VENV) calico *.egg-info $(STATE_DIR)
