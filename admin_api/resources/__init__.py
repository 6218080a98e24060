"""One module per resource; each declares its models and a `routes` table."""
