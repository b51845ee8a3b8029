"""Client for the token-mint Lambda: HighLevel location and agency access
tokens in one call, cached in this process until expiresAt - min_validity,
one invoke per key at a time (thread-safe), typed errors. See README.md."""

import base64
import json
import re
import threading
import time

__all__ = ["TokenClient", "TokenError", "SecretToken", "AccessToken"]

DEFAULT_MIN_VALIDITY_SECONDS = 300
# Asked of the mint beyond min_validity: the least a fetched token stays cached.
FETCH_AHEAD_SECONDS = 900
_MINT_MAX_VALIDITY = 82_800

_RETRYABLE = {"RateLimited", "UpstreamUnavailable", "Internal"}
_PERMANENT = {
    "InvalidRequest", "InstallNotFound", "NeedsReauthorization",
    "LocationNotInstalled", "AppUninstalled", "BadResponse",
}
_RETRYABLE_INVOKE = {
    "TooManyRequestsException", "ServiceException", "EC2ThrottledException",
    "ResourceNotReadyException", "ResourceConflictException",
}


class TokenError(Exception):
    """A failure with the mint's stable error_type (or Invoke / BadResponse)."""

    def __init__(self, error_type, message, retryable=None, retry_after_seconds=None):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        # Lambda's own failures (Sandbox.Timedout, ...) and unknown types pass.
        self.retryable = (error_type not in _PERMANENT) if retryable is None else retryable
        self.retry_after_seconds = retry_after_seconds

    def is_retryable(self):
        return self.retryable


class SecretToken:
    """The bearer token; repr and str print [redacted]."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def expose(self):
        return self._value

    def __repr__(self):
        return "SecretToken([redacted])"

    __str__ = __repr__


class AccessToken:
    __slots__ = ("token", "token_type", "expires_at", "scope", "company_id",
                 "location_id", "user_type", "source", "_valid_until")

    def __init__(self, answer, sent_at):
        self.token = SecretToken(answer["accessToken"])
        self.token_type = answer.get("tokenType") or "Bearer"
        self.expires_at = answer.get("expiresAt")
        self.scope = answer.get("scope")
        self.company_id = answer.get("companyId")
        self.location_id = answer.get("locationId")
        self.user_type = answer.get("userType")
        self.source = answer.get("source")
        # This process's monotonic clock: a skewed clock cannot stretch it.
        self._valid_until = sent_at + answer["expiresIn"]

    def expires_in(self):
        return max(0.0, self._valid_until - time.monotonic())

    def authorization(self):
        return f"{self.token_type} {self.token.expose()}"

    def __repr__(self):
        return (f"AccessToken(token=[redacted], user_type={self.user_type!r}, "
                f"location_id={self.location_id!r}, company_id={self.company_id!r}, "
                f"expires_at={self.expires_at!r}, source={self.source!r})")


class _Flight:
    def __init__(self):
        self.done = threading.Event()
        self.token = None
        self.error = None


class TokenClient:
    """lambda_client: boto3.client("lambda"); function_name: the mint's name or ARN."""

    def __init__(self, lambda_client, function_name, caller=None,
                 min_validity_seconds=DEFAULT_MIN_VALIDITY_SECONDS):
        self._lambda = lambda_client
        self._function_name = function_name
        self._min_validity = min_validity_seconds
        self._client_context = None if caller is None else base64.b64encode(
            json.dumps({"custom": {"caller": caller}}).encode()).decode()
        self._lock = threading.Lock()
        self._tokens = {}
        self._flights = {}

    def location_token(self, location_id, company_id=None):
        """The location's token; company_id only for a location the mint does not know yet."""
        return self._token("Location", location_id, company_id)

    def company_token(self, company_id):
        """The agency's own token (company-level endpoints)."""
        return self._token("Company", company_id, None)

    def installed_locations(self, company_id):
        """The locations where the agency app is installed; not cached."""
        return self._call({"action": "listInstalledLocations", "companyId": company_id})

    def forget(self, kind, id_):
        """Forgets a cached token (say, after HighLevel answered 401 to it)."""
        with self._lock:
            self._tokens.pop((kind, id_), None)

    def _token(self, kind, id_, company_id):
        key = (kind, id_)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_in() > self._min_validity:
                return cached
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            # Another thread is invoking for this key: share its outcome.
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.token
        try:
            flight.token = self._fetch(kind, id_, company_id)
        except TokenError as e:
            flight.error = e
        except Exception as e:  # noqa: BLE001 - waiters must never hang on a surprise
            flight.error = TokenError("Invoke", f"Lambda Invoke failed ({type(e).__name__})", True)
        finally:
            with self._lock:
                self._flights.pop(key, None)
                if flight.token is not None:
                    self._tokens[key] = flight.token
            flight.done.set()
        if flight.error is not None:
            raise flight.error
        return flight.token

    def _fetch(self, kind, id_, company_id):
        min_validity = min(self._min_validity + FETCH_AHEAD_SECONDS, _MINT_MAX_VALIDITY)
        if kind == "Company":
            request = {"action": "companyToken", "companyId": id_, "minValiditySeconds": min_validity}
        else:
            request = {"locationId": id_, "minValiditySeconds": min_validity}
            if company_id:
                request["companyId"] = company_id
        sent_at = time.monotonic()
        answer = self._call(request)
        if not isinstance(answer.get("accessToken"), str) or not isinstance(answer.get("expiresIn"), int):
            raise TokenError("BadResponse", "the answer has no accessToken or expiresIn")
        return AccessToken(answer, sent_at)

    def _call(self, request):
        kwargs = {"FunctionName": self._function_name, "Payload": json.dumps(request).encode()}
        if self._client_context:
            kwargs["ClientContext"] = self._client_context
        try:
            out = self._lambda.invoke(**kwargs)
        except Exception as e:  # botocore's ClientError and connection errors
            code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
            retryable = code in _RETRYABLE_INVOKE if code else True
            raise TokenError("Invoke", f"Lambda Invoke failed ({code or type(e).__name__}): {e}", retryable) from e
        payload = out["Payload"].read() if hasattr(out["Payload"], "read") else out["Payload"]
        if out.get("FunctionError"):
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = {}
            doc = doc if isinstance(doc, dict) else {}
            error_type = doc.get("errorType") or "Unhandled"
            message = doc.get("errorMessage") or ""
            m = re.search(r"retry after (\d+)", message)
            raise TokenError(
                error_type, message,
                True if error_type in _RETRYABLE else None,
                int(m.group(1)) if error_type == "RateLimited" and m else None)
        try:
            return json.loads(payload)
        except ValueError:
            # Never the text itself: it could hold a token.
            raise TokenError("BadResponse", "the answer is not JSON") from None
