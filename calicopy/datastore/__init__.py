"""Access to the shared datastore (etcd v3).

``keys`` owns every key path; ``store`` defines the small interface the
services program against; ``etcd`` implements it over a real etcd.
"""
