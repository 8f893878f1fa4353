"""Configuration: the schema, its parsing and validation, and the host grammar."""
