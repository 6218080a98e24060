"""The admin API: an aiohttp application inside the daemon (the only package importing aiohttp.web).

`create_app(...)` builds it; `start_admin_api(...)` makes it listen and returns a handle to stop it.
Errors answer as RFC 9457 problems; the tree is drawn in `admin_api.problems`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from admin_api.app import create_app
from admin_api.server import AdminApiHandle, start_admin_api
from admin_api.state import ApiOptions, Services

__all__ = ["AdminApiHandle", "ApiOptions", "Services", "__version__", "create_app", "start_admin_api"]
