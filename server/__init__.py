"""etcdlite: an etcd v3 server in Python."""

__version__ = "0.1.0"
