"""The S3 protocol: request parsing, operations, SigV4, aws-chunked framing."""
