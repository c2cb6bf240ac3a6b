"""etcdlite.storage.etcd: etcd's own on-disk formats (its bbolt database, its WAL), read and written as plain data."""
