"""calico-policy: the policy service process (the composition root)."""

import sys

from calicopy import config, service_main
from services.policy.registry import PolicyRegistry
from services.policy.server import create_server


def build(listen, store, security):
    return create_server(listen, PolicyRegistry(store), security=security)[0]


if __name__ == "__main__":
    sys.exit(service_main.run("calico-policy: the policy service (profiles, rules, explain).",
                              "services.policy", "calico-policy", config.POLICY_LISTEN, build))
