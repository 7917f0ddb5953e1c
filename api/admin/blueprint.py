"""The `admin` blueprint: every page behind it needs a signed-in operator and, for POSTs, the
form's CSRF token. Its routes live in `jobs`, `keys` and `system`."""
from __future__ import annotations

from flask import Blueprint

from api.admin.security import protect

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
protect(bp, sign_in_required=True)
