"""The web layer's shared pieces: the error shape, request parsing, OpenAPI operations declared
as data, security headers and login sessions, the access log, abuse limits, the HTML pages and
their charts, health and metrics.

Imports point one way: ``cp.web`` and the blueprints (``cp.api``, ``cp.agent_api``,
``cp.admin``) use the domain packages (``cp.fleet``, ``cp.delivery``, ``cp.background``), which
use ``cp.models``; the domain never reads Flask's ``request``.
"""
