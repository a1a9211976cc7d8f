"""S3 errors told apart by botocore's error codes (exc.response["Error"]["Code"]) and exception classes, never by
their text: the one place uploads, archived jobs and TES transfers ask what an S3 failure was. botocore is an
optional extra, imported only when there is an error to look at (without it, there are no S3 errors)."""
from __future__ import annotations

# What classify() answers.
MISSING_KEY = "missing_key"          # the bucket is there, the object is not
MISSING_BUCKET = "missing_bucket"
DENIED = "denied"                    # the keys (or their absence) do not allow it
TOO_LARGE = "too_large"              # the object or the bucket's quota is too small for it
UNREACHABLE = "unreachable"          # no answer, a broken connection or a 5xx: worth another try later
FAILED = "failed"                    # anything else

_MISSING_KEY = {"NoSuchKey", "404"}  # "404": HEAD has no body to carry a code, botocore uses the status
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AccountProblem"}
_UNREACHABLE = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "500", "502",
                "503", "504"}


def client_error(exc: BaseException):
    """The botocore ClientError behind exc (exc itself, or the cause boto3's transfer errors wrap), or None."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:
        return None
    seen: BaseException | None = exc
    for _ in range(5):               # a short chain: S3UploadFailedError -> ClientError
        if seen is None:
            return None
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def s3_error_code(exc: BaseException) -> str | None:
    """S3's error code for exc ("NoSuchKey", "AccessDenied", "404"...), or None when S3 never answered."""
    error = client_error(exc)
    if error is None:
        return None
    return str(error.response.get("Error", {}).get("Code") or "") or None


def classify(exc: BaseException) -> str:
    """Which kind of failure exc is (MISSING_KEY, MISSING_BUCKET, DENIED, TOO_LARGE, UNREACHABLE or FAILED)."""
    code = s3_error_code(exc)
    if code is not None:
        if code in _MISSING_KEY:
            return MISSING_KEY
        if code == "NoSuchBucket":
            return MISSING_BUCKET
        if code in _DENIED:
            return DENIED
        if code == "EntityTooLarge" or code.endswith("QuotaExceeded"):    # MinIO: XMinioAdminBucketQuotaExceeded
            return TOO_LARGE
        status = client_error(exc).response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return UNREACHABLE if code in _UNREACHABLE or status >= 500 else FAILED
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
    except ImportError:
        return FAILED
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError...
    return UNREACHABLE if isinstance(exc, (BotoConnectionError, HTTPClientError)) else FAILED


def describe(exc: BaseException) -> str | None:
    """"S3 <Code>: <Message>" when S3 answered with an error, else None (the caller names the transport error)."""
    error = client_error(exc)
    if error is None:
        return None
    err = error.response.get("Error", {})
    return f"S3 {err.get('Code', '?')}: {err.get('Message') or error}"


def describe_error(exc: BaseException) -> str:
    """S3's error code and message, or the transport error's class and text."""
    return describe(exc) or f"{exc.__class__.__name__}: {exc}"
