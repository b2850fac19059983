"""Delivery: the Redis stream -> consumer -> users' channels -> hub -> each tab's session."""
