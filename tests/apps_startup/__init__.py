"""Import targets for tests/test_startup_servers.py: each app reads its cache config from the
path in `STARTUP_CACHE_YAML`, as an app would from a file beside it."""
