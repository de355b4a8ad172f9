"""calico-node: the per-host supervisor (the node's composition root).

Started by `calicoctl node`, in the host's network namespace. It runs, and
restarts when they die: the policy agent, the endpoint service, the BIRD
config renderer and BIRD, IP-in-IP (tunl0 and its routes, for pools that use
it), and, when a Docker engine answers on DOCKER_HOST
(or on its alternative socket), the Docker network and IPAM plugin and the
CALICO_IP proxy. Sockets, configuration, pids and logs live in the node's
state folder (0700; its sockets 0600, BIRD's control socket made so once BIRD
has created it). The Python processes are forked from this one after it has
imported their modules (``node.zygote``), so they share that memory.

Usage:
  calico-node --name=<NODE> [--no-ipv6] [--mtu=<MTU>]
"""

from __future__ import annotations

import gc

# No collection until the children's modules are loaded and frozen
# (node.zygote.preload): a collection now would leave freed holes in pages the
# children share, which their first allocations would then write to (copy).
gc.disable()

import logging  # noqa: E402 - after gc.disable(), on purpose
import os  # noqa: E402
import sys  # noqa: E402

from docopt import docopt  # noqa: E402

from calicopy import config, logs, metrics  # noqa: E402
from calicopy.docker_engine import real_socket  # noqa: E402
from calicopy.localfiles import private_dir  # noqa: E402
from calicopy.service_main import stop_event  # noqa: E402
from node import zygote  # noqa: E402
from node.supervisor import Child, Supervisor  # noqa: E402

POLICY_WAIT = 10   # seconds an add may wait for the policy agent
# What the children import only when they first need it (calicopy.tls reads a
# certificate's identity with cryptography; calicopy.docker_engine loads the
# Docker SDK and requests): loaded once here too, so shared like the rest.
LAZY_IMPORTS = ["calicopy.pki"]
DOCKER_LAZY_IMPORTS = ["docker", "requests"]


def main(argv=None) -> int:
    args = docopt(__doc__, argv)
    name = args["--name"]
    p = config.node_paths(name)
    private_dir(p.dir)
    logs.setup("node", name)
    p.pid.write_text(str(os.getpid()))
    python = sys.executable
    env = {"CALICO_NODENAME": name}
    # Here too, before the preloaded modules read their environment.
    os.environ.update(env)
    endpoint_argv = [python, "-m", "services.endpoint", f"--name={name}",
                     f"--listen={p.endpoint_addr}", f"--policy-wait={POLICY_WAIT}"] + \
        (["--no-ipv6"] if args["--no-ipv6"] else []) + \
        ([f"--mtu={args['--mtu']}"] if args["--mtu"] else [])
    bird_argv = ["bird", "-f", "-c", str(p.bird_conf), "-s", str(p.bird_ctl),
                 "-P", str(p.bird_pid)]
    children = [
        # The policy agent first: endpoints must never be up without their policy.
        Child("policy agent", [python, "-m", "node.policy", f"--name={name}"],
              p.log("policy"), env, title="calico-policy"),
        Child("endpoint service", endpoint_argv, p.log("endpoint"), env,
              title="calico-endpoint"),
        Child("bird renderer", [python, "-m", "node.bird", f"--name={name}",
                                f"--config={p.bird_conf}", f"--ctl={p.bird_ctl}"],
              p.log("renderer"), env, title="calico-renderer"),
        Child("bird", bird_argv, p.log("bird"), needs_file=p.bird_conf, socket=p.bird_ctl,
              # After a crash: graceful-restart recovery, so BIRD keeps the routes
              # it left in the kernel until its peers have re-sent theirs.
              restart_argv=bird_argv[:2] + ["-R"] + bird_argv[2:]),
        Child("ipip", [python, "-m", "node.ipip", f"--name={name}"], p.log("ipip"), env,
              title="calico-ipip"),
    ]
    docker_sock = config.DOCKER_HOST.resolve()
    # Wherever the engine's socket is, whether the engine answers yet or not
    # (the node may start first at boot): both children wait for it.
    if os.path.exists(docker_sock) or os.path.exists(real_socket(docker_sock)):
        plugin_dir = config.DOCKER_PLUGIN_DIR.resolve()
        children += [
            Child("docker plugin", [python, "-m", "node.docker_plugin", f"--name={name}",
                                    f"--plugin-dir={plugin_dir}"],
                  p.log("docker-plugin"), env, title="calico-dplugin"),
            # The CALICO_IP proxy serves DOCKER_HOST only while the engine
            # listens on the alternative socket, and watches the engine either
            # way (see node/docker_proxy).
            Child("docker proxy", [python, "-m", "node.docker_proxy", f"--name={name}",
                                   f"--listen={docker_sock}"],
                  p.log("docker-proxy"), env, title="calico-dproxy")]
    for child in children:
        if child.argv[0] == python:
            child.fork = True
    docker = any(c.name.startswith("docker") for c in children)
    zygote.preload([c.argv[2] for c in children if c.fork] + LAZY_IMPORTS
                   + (DOCKER_LAZY_IMPORTS if docker else []))
    stop = stop_event()
    logging.getLogger("calico-node").info("node %s starting in %s", name, p.dir)
    try:
        metrics_addr = config.metrics_addr("node")
    except config.ConfigError as exc:
        logging.getLogger("calico-node").error("%s; serving no metrics", exc)
        metrics_addr = ""
    url = metrics.serve_node(metrics_addr, p.dir, metrics.NODE_PROCESSES[1:])
    Supervisor(children, p.status, url or "").run(stop)
    p.pid.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
