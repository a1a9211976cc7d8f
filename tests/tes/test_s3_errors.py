"""S3 failures told apart by botocore's error codes (caesar_rest.s3errors), against moto's S3 server: a missing key,
a missing bucket, access denied and no server at all, as the uploads store (caesar_rest.s3store) and the TES
transfers (workers.transfer) see them."""
from __future__ import annotations

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from caesar_rest import s3errors, s3store
from caesar_rest.errors import NotFound, StorageUnavailable

from ..support import embedded_settings, free_port
from .conftest import BUCKET

MISSING_BUCKET = "caesar-no-such-bucket"


def failure(call, *args, **kwargs) -> Exception:
    with pytest.raises(Exception) as caught:
        call(*args, **kwargs)
    return caught.value


def test_missing_key(s3_server):
    _endpoint, s3 = s3_server
    exc = failure(s3.get_object, Bucket=BUCKET, Key="no/such/key")
    assert isinstance(exc, ClientError)
    assert s3errors.s3_error_code(exc) == "NoSuchKey" and s3errors.classify(exc) == s3errors.MISSING_KEY
    assert s3errors.describe(exc).startswith("S3 NoSuchKey: ")
    head = failure(s3.head_object, Bucket=BUCKET, Key="no/such/key")     # HEAD has no body: the status is the code
    assert s3errors.s3_error_code(head) == "404" and s3errors.classify(head) == s3errors.MISSING_KEY


def test_missing_bucket(s3_server, tmp_path):
    _endpoint, s3 = s3_server
    exc = failure(s3.get_object, Bucket=MISSING_BUCKET, Key="k")
    assert s3errors.s3_error_code(exc) == "NoSuchBucket" and s3errors.classify(exc) == s3errors.MISSING_BUCKET
    source = tmp_path / "f.txt"
    source.write_bytes(b"data")
    wrapped = failure(s3.upload_file, str(source), MISSING_BUCKET, "k")  # boto3's S3UploadFailedError wraps the code
    assert not isinstance(wrapped, ClientError)
    assert s3errors.s3_error_code(wrapped) == "NoSuchBucket"


def test_access_denied(s3_server):
    endpoint, s3 = s3_server
    s3.put_object(Bucket=BUCKET, Key="errors/private.txt", Body=b"private\n")
    anonymous = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED))
    exc = failure(anonymous.get_object, Bucket=BUCKET, Key="errors/private.txt")   # the bucket is not public
    # moto answers this GET with a bare 403 (botocore's code "403"); S3 sends the code AccessDenied
    assert s3errors.s3_error_code(exc) in ("AccessDenied", "403") and s3errors.classify(exc) == s3errors.DENIED


def test_no_server_is_unreachable():
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
                          aws_access_key_id="k", aws_secret_access_key="s",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    exc = failure(client.get_object, Bucket=BUCKET, Key="k")
    assert isinstance(exc, EndpointConnectionError)
    assert s3errors.s3_error_code(exc) is None and s3errors.classify(exc) == s3errors.UNREACHABLE
    assert s3errors.describe(exc) is None and s3errors.describe_error(exc).startswith("EndpointConnectionError: ")


def test_the_store_maps_them_to_domain_errors(s3_server, tmp_path):
    endpoint, _s3 = s3_server
    settings = embedded_settings(tmp_path, STORAGE="s3", S3_BUCKET=BUCKET, S3_ENDPOINT_URL=endpoint,
                                 S3_ACCESS_KEY_ID="testing", S3_SECRET_ACCESS_KEY="testing", S3_REGION="us-east-1")
    store = s3store.S3Store(settings)
    with pytest.raises(NotFound):
        store.open_stream(f"s3://{BUCKET}/no/such/key")
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        store.open_stream(f"s3://{MISSING_BUCKET}/key")
    assert s3store.read_tail(store, f"s3://{BUCKET}/no-such-job/", "stdout.log", 100) == b""
    # HEAD cannot tell a missing bucket from a missing key (a bare 404 both); no server at all is not "missing"
    down = s3store.S3Store({**settings, "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(StorageUnavailable, match="EndpointConnectionError"):
        s3store.read_tail(down, f"s3://{BUCKET}/job/", "stdout.log", 100)


def test_a_transfer_names_the_code(s3_server, tmp_path):
    from workers.transfer import TransferError, Transfers

    endpoint, _s3 = s3_server
    settings = {"TES_S3_BUCKETS": [{"bucket": BUCKET, "users": "*", "access": "read", "endpoint_url": endpoint,
                                    "credentials": {"access_key_id": "testing", "secret_access_key": "testing"}}]}
    with pytest.raises(TransferError, match="S3 NoSuchKey: ") as caught:
        Transfers(settings, "alice").download(f"s3://{BUCKET}/no/such/key", tmp_path / "in", "FILE")
    assert s3errors.classify(caught.value) == s3errors.MISSING_KEY     # the ClientError is its cause
