"""The routing model: labels parsed into services, grouped into hosts, routes and upstreams."""
