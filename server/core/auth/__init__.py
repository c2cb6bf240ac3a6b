"""etcdlite.core.auth"""
