"""Everything that speaks Redis: the lean wire, streams and the consumer group, pub/sub,
presence and the login limits. The only package that imports redis or hiredis."""
