"""The admin sub-app: `app.mount("/admin/cache", create_admin_app(config=..., token=...))`."""

from __future__ import annotations

from .app import create_admin_app

__all__ = ["create_admin_app"]
