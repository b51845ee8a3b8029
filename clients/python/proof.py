"""Drives a real boto3 Lambda client through the TokenClient against the
endpoint the Rust test serves (dev/testkit/tests/clients.rs runs this), and
prints one JSON line of what it got: fingerprints, never tokens."""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import boto3

from ghl_token_client import TokenClient, TokenError


def fp(t):
    return hashlib.sha256(t.token.expose().encode()).hexdigest()[:12]


env = os.environ
lam = boto3.client("lambda", endpoint_url=env["MINT_ENDPOINT"], region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
client = TokenClient(lam, env["MINT_FUNCTION"], caller=env["CALLER"])
loc, co, missing = env["LOCATION_ID"], env["COMPANY_ID"], env["MISSING_ID"]

with ThreadPoolExecutor(max_workers=20) as pool:
    burst = list(pool.map(lambda _: client.location_token(loc, company_id=co), range(20)))
company = client.company_token(co)
company_again = client.company_token(co)
installed = client.installed_locations(co)
try:
    client.location_token(missing)
    error = None
except TokenError as e:
    error = {"errorType": e.error_type, "retryable": e.is_retryable()}
print(json.dumps({
    "location": {"fps": sorted({fp(t) for t in burst}), "userType": burst[0].user_type,
                 "locationId": burst[0].location_id, "companyId": burst[0].company_id},
    "company": {"fp": fp(company), "again": fp(company_again), "userType": company.user_type,
                "companyId": company.company_id},
    "installed": {"count": installed["count"], "ids": [l["locationId"] for l in installed["locations"]]},
    "error": error,
}))
