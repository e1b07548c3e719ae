"""The HTTP API, one router per concern: `inference` (POST /superresolve, /samples, /traverse),
`health` (/health/*, /metrics) and `models` (/v1/models). How an inference route is declared,
and what it gets for free (auth, readiness, admission, the deadline): `inference_route`.
"""
