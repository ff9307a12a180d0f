pytest_plugins = ["dfdb.testing.plugin"]
