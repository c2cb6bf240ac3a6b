"""etcdlite.transport"""
