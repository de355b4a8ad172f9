"""The BGP service: node registry, BGP settings, peers and session status."""
