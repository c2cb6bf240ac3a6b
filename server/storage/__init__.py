"""etcdlite.storage"""
