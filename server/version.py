"""The etcd version etcdlite reports on ``/version`` and in ``/metrics``.

etcdlite serves etcd's v3.5 API (its behaviour is checked against etcd 3.5.1) and reports
itself as etcd "3.5.0", the release ``Maintenance.Status`` names too (there with etcdlite's own
version as semver build metadata, "3.5.0+etcdlite.X").  ``/version`` carries the plain number:
clients parse it as integers to choose an API path (etcd3gw: ``/v3/`` from 3.4 on) and a
suffix would break them.  etcdlite's own version is ``etcdlite --version``.
"""

SERVER_VERSION = "3.5.0"
CLUSTER_VERSION = "3.5.0"  # etcd reports the cluster version as major.minor.0
