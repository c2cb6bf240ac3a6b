"""etcdlite: an etcd v3 server in Python.

``etcdlite.Server`` starts one in its own process (see ``etcdlite.process``);
importing this package loads nothing else, so it is safe next to any etcd client.
"""

from .process import FaultInjectionError, Server, ServerError

__version__ = "0.1.0"
__all__ = ["FaultInjectionError", "Server", "ServerError", "__version__"]
