"""The service kit: what every FastAPI service of the project is built from.

The app factory and ``python -m services.<name>`` (``service``), worker processes (``workers``), the one error type
and its JSON body (``errors``), request limits and uploads (``uploads``, ``hosts``, ``params``), calls between
services (``upstream``), tokens (``auth``), Prometheus series (``metrics``), the API's bodies (``schemas``) and the
audit trail of the answers given (``audit``).
"""
