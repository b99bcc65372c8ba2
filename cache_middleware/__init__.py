"""cache-middleware: a drop-in HTTP response cache for ASGI and WSGI apps.

app.add_middleware(CacheMiddleware, config="cache.yaml")                   # Starlette, FastAPI
app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config="cache.yaml")     # Flask
"""

from __future__ import annotations

from .admin import create_admin_app
from .asgi import CacheMiddleware
from .config import Settings, load_config
from .errors import CacheError, ConfigError, StoreUnavailable
from .manager import CacheManager, SyncCacheManager, get_cache_manager, get_sync_cache_manager
from .wsgi import WSGICacheMiddleware

__all__ = [
    "CacheError",
    "CacheManager",
    "CacheMiddleware",
    "ConfigError",
    "Settings",
    "StoreUnavailable",
    "SyncCacheManager",
    "WSGICacheMiddleware",
    "create_admin_app",
    "get_cache_manager",
    "get_sync_cache_manager",
    "load_config",
]

__version__ = "0.1.0"
