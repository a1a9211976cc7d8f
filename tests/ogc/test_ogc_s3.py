"""Results of an OGC job whose directory moved to S3 (STORAGE s3, moto's server): the outputs by value, one output's
bytes and the archive come from the bucket once the local directory is gone."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from ..support import wait_until


def test_results_of_a_job_whose_directory_moved_to_s3(batch_stack, schemas):
    client = batch_stack.client
    r = client.post("/ogcapi/processes/sleeper/execution", headers={"Prefer": "respond-async"},
                    json={"inputs": {"seconds": 0, "message": "kept in s3"}})
    assert r.status_code == 201, r.get_json()
    job_id = r.get_json()["jobID"]
    wait_until(lambda: client.get(f"/ogcapi/jobs/{job_id}").get_json()["status"] == "successful", 120,
               "the job successful")
    workdir = Path(batch_stack.settings["ROOT"]) / "jobs" / "anonymous" / job_id
    wait_until(lambda: not workdir.exists(), 30, "the local job directory removed once it is in S3")
    doc = client.get(f"/ogcapi/jobs/{job_id}/results").get_json()
    schemas.validate(doc, "results")
    assert doc["sleeper"] == {"value": "kept in s3\n", "mediaType": "text/plain"}
    one = client.get(f"/ogcapi/jobs/{job_id}/results/sleeper")
    assert one.status_code == 200 and one.data == b"kept in s3\n" and one.mimetype == "text/plain"
    archive = client.get(f"/ogcapi/jobs/{job_id}/results/archive")
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        assert f"job_{job_id}/sleeper.txt" in tar.getnames()
