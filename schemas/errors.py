"""One error base. The runtime routes on the two subclasses: permanent errors are
dead-lettered at once, transient ones are retried with bounded backoff first."""


class LLMOpsError(Exception):
    """Base of every error this project raises on purpose."""


class PermanentError(LLMOpsError):
    """Retrying cannot help: bad input, a domain rule, a misconfiguration."""


class TransientError(LLMOpsError):
    """The same call may succeed later: a timeout, a 429, a 5xx, a dependency restarting."""


class InvalidEvent(PermanentError):
    """Bytes that are not a valid event of the expected type."""
