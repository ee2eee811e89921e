"""S3-style errors: exceptions the proxy raises and the XML body it answers with."""

from __future__ import annotations

import secrets

from .s3.xml import xml_text


class S3Error(Exception):
    """An error answered to the client as an S3 XML error document.

    ``code`` and ``status`` follow the S3 API reference.  ``message`` is sent to
    the client, so it must never contain a secret.  ``extra`` adds elements to
    the XML body (e.g. ``CanonicalRequest`` for SignatureDoesNotMatch).
    """

    code = "InternalError"
    status = 500
    default_message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 status: int | None = None, **extra: str) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra
        super().__init__(f"{self.code}: {self.message}")

    def to_xml(self, *, resource: str = "", request_id: str = "") -> bytes:
        """The S3 ``<Error>`` document for this error."""
        parts = [f"<Code>{xml_text(self.code)}</Code>", f"<Message>{xml_text(self.message)}</Message>"]
        for name, value in self.extra.items():
            parts.append(f"<{name}>{xml_text(str(value))}</{name}>")
        if resource:
            parts.append(f"<Resource>{xml_text(resource)}</Resource>")
        if request_id:
            parts.append(f"<RequestId>{xml_text(request_id)}</RequestId>")
        body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(parts) + "</Error>"
        return body.encode()


def _error(name: str, status: int, message: str) -> type[S3Error]:
    return type(name, (S3Error,), {"code": name, "status": status, "default_message": message,
                                   "__doc__": f"S3 ``{name}`` ({status})."})


AccessDenied = _error("AccessDenied", 403, "Access Denied")
InvalidAccessKeyId = _error("InvalidAccessKeyId", 403,
                            "The AWS Access Key Id you provided does not exist in our records.")
SignatureDoesNotMatch = _error("SignatureDoesNotMatch", 403,
                               "The request signature we calculated does not match the signature you provided.")
RequestTimeTooSkewed = _error("RequestTimeTooSkewed", 403,
                              "The difference between the request time and the current time is too large.")
ExpiredToken = _error("ExpiredToken", 400, "The provided token has expired.")
InvalidToken = _error("InvalidToken", 400, "The provided token is malformed or otherwise invalid.")
InvalidRequest = _error("InvalidRequest", 400, "Invalid Request")
InvalidArgument = _error("InvalidArgument", 400, "Invalid Argument")
InvalidURI = _error("InvalidURI", 400, "Couldn't parse the specified URI.")
InvalidBucketName = _error("InvalidBucketName", 400, "The specified bucket is not valid.")
IncompleteBody = _error("IncompleteBody", 400,
                        "You did not provide the number of bytes specified by the Content-Length HTTP header.")
RequestTimeout = _error("RequestTimeout", 400, "Your socket connection to the server was not read from "
                                               "or written to within the timeout period.")
InvalidDigest = _error("InvalidDigest", 400, "The Content-MD5 or checksum value you specified is not valid.")
BadDigest = _error("BadDigest", 400, "The checksum you specified did not match what we received.")
MalformedXML = _error("MalformedXML", 400, "The XML you provided was not well-formed or did not validate "
                                           "against our published schema.")
XAmzContentSHA256Mismatch = _error("XAmzContentSHA256Mismatch", 400,
                                   "The provided 'x-amz-content-sha256' header does not match what was computed.")
MissingContentLength = _error("MissingContentLength", 411, "You must provide the Content-Length HTTP header.")
EntityTooLarge = _error("EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed size.")
RequestHeaderSectionTooLarge = _error("RequestHeaderSectionTooLarge", 400,
                                      "Your request header section exceeds the maximum allowed size.")
MethodNotAllowed = _error("MethodNotAllowed", 405, "The specified method is not allowed against this resource.")
NotImplementedError_ = _error("NotImplemented", 501,
                              "A header you provided implies functionality that is not implemented.")
NoSuchBucket = _error("NoSuchBucket", 404, "The specified bucket does not exist.")
InternalError = _error("InternalError", 500, "We encountered an internal error. Please try again.")
BadGateway = _error("BadGateway", 502, "The backend could not be reached.")
ServiceUnavailable = _error("ServiceUnavailable", 503, "The backend is unavailable. Please try again.")
GatewayTimeout = _error("GatewayTimeout", 504, "The backend did not answer in time.")


def new_request_id() -> str:
    """A request id like S3's: 16 upper-case hex characters."""
    return secrets.token_hex(8).upper()
