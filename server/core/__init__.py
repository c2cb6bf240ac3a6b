"""etcdlite.core"""
