"""What runs on each host, under the node supervisor (``python -m node``):
the policy agent (``node.policy``: iptables and ipsets), the endpoint service
(``services.endpoint``), BIRD and its config renderer (``node.bird``),
IP-in-IP (``node.ipip``: tunl0 and the routes through it), and on
hosts with Docker, the Docker network and IPAM plugin (``node.docker_plugin``)
and the CALICO_IP proxy (``node.docker_proxy``).
"""
