"""What runs on each host: the supervisor, BIRD and its config renderer, and
(through services.endpoint) the endpoint service."""
