"""BIRD on one node: its configuration model and template (``conf``), talking
to a running BIRD (``ctl``), and the renderer that keeps it in step with etcd.
"""
