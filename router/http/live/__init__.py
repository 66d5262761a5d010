"""The live page: a fleet feed of snapshots and changes (feed.py, rows.py) and the routes
that serve the page, its event stream and its login (routes.py, session.py, static/)."""

from router.http.live.feed import LiveFeed
from router.http.live.routes import PageAccess, with_page

__all__ = ["LiveFeed", "PageAccess", "with_page"]
