"""Render: the routing model through Jinja2 templates into a proxy's config bytes."""
