"""The explorer's refusals that are not about a bad field value: unknown names and requests over the
server's limits (the app maps unknown names to 404, the others to 400)."""

from saelab.errors import SaelabError


class UnknownSAEError(SaelabError):
    """A request named an SAE the server did not load."""


class UnknownGraphError(SaelabError):
    """A request named an attribution graph the server did not load."""


class RequestLimitError(SaelabError):
    """A request asks for more than the server's limits allow."""
