"""etcdlite.storage.memory"""
