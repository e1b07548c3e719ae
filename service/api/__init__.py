"""The HTTP API, one router per concern: `inference` (POST /superresolve, /samples, /traverse),
`photo` (POST /photo), `health` (/health/*, /metrics), `models` (/v1/models) and `page`
(GET /, the web page). How an inference route is declared,
and what it gets for free (auth, readiness, admission, the deadline): `inference_route`.
"""
