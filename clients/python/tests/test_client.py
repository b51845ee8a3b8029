import base64
import io
import json
import threading
import time
import unittest

from ghl_token_client import TokenClient, TokenError


class FakeLambda:
    """Stands in for boto3's Lambda client: records each invoke, answers after `delay`."""

    def __init__(self, reply, delay=0.0):
        self.reply, self.delay, self.sent, self.n = reply, delay, [], 0
        self.lock = threading.Lock()

    def invoke(self, **kwargs):
        with self.lock:
            n = self.n
            self.n += 1
            self.sent.append(kwargs)
        time.sleep(self.delay)
        return self.reply(json.loads(kwargs["Payload"]), n)


def ok(body):
    return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(body).encode())}


def token_reply(expires_in):
    def reply(req, n):
        company = req.get("action") == "companyToken"
        return ok({"accessToken": f"tok-{n}", "tokenType": "Bearer", "expiresAt": "2026-11-23T08:00:00Z",
                   "expiresIn": expires_in, "companyId": req.get("companyId", "co"),
                   "locationId": None if company else req["locationId"],
                   "userType": "Company" if company else "Location", "source": "minted"})
    return reply


def burst(fn, n):
    results = [None] * n

    def run(i):
        try:
            results[i] = fn()
        except TokenError as e:
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class TokenClientTest(unittest.TestCase):
    def test_a_burst_makes_one_invoke_and_the_cache_serves_the_rest(self):
        lam = FakeLambda(token_reply(86_399), delay=0.1)
        c = TokenClient(lam, "mint")
        tokens = burst(lambda: c.location_token("loc-1"), 20)
        self.assertEqual(len(lam.sent), 1)
        self.assertEqual({t.token.expose() for t in tokens}, {"tok-0"})
        self.assertEqual(c.location_token("loc-1").token.expose(), "tok-0")
        self.assertEqual(len(lam.sent), 1)
        self.assertEqual(c.company_token("loc-1").user_type, "Company")
        self.assertEqual(len(lam.sent), 2, "another kind is another key")

    def test_a_token_with_no_more_than_min_validity_left_is_fetched_again(self):
        lam = FakeLambda(token_reply(300))
        c = TokenClient(lam, "mint", min_validity_seconds=300)
        c.location_token("l")
        c.location_token("l")
        self.assertEqual(len(lam.sent), 2)
        lam = FakeLambda(token_reply(302))
        c = TokenClient(lam, "mint", min_validity_seconds=300)
        c.location_token("l")
        c.location_token("l")
        self.assertEqual(len(lam.sent), 1)
        c.forget("Location", "l")
        c.location_token("l")
        self.assertEqual(len(lam.sent), 2)

    def test_a_burst_shares_one_error_and_errors_are_not_cached(self):
        def reply(req, n):
            return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": io.BytesIO(json.dumps(
                {"errorType": "RateLimited", "errorMessage": "HighLevel rate limit reached; retry after 3 s"}).encode())}
        lam = FakeLambda(reply, delay=0.1)
        c = TokenClient(lam, "mint")
        errors = burst(lambda: c.location_token("l"), 5)
        self.assertEqual(len(lam.sent), 1)
        for e in errors:
            self.assertIsInstance(e, TokenError)
            self.assertEqual(e.error_type, "RateLimited")
            self.assertTrue(e.is_retryable())
            self.assertEqual(e.retry_after_seconds, 3)
        with self.assertRaises(TokenError):
            c.location_token("l")
        self.assertEqual(len(lam.sent), 2)
        nf = FakeLambda(lambda r, n: {"FunctionError": "Unhandled", "Payload": io.BytesIO(
            b'{"errorType":"InstallNotFound","errorMessage":"no install"}')})
        with self.assertRaises(TokenError) as ctx:
            TokenClient(nf, "mint").company_token("c")
        self.assertEqual(ctx.exception.error_type, "InstallNotFound")
        self.assertFalse(ctx.exception.is_retryable())

    def test_requests_carry_the_mint_shapes_and_the_caller(self):
        def reply(req, n):
            if req.get("action") == "listInstalledLocations":
                return ok({"companyId": "co", "count": 1, "complete": True, "locations": [{"locationId": "l1"}]})
            return token_reply(86_399)(req, n)
        lam = FakeLambda(reply)
        c = TokenClient(lam, "arn:mint", caller="billing", min_validity_seconds=60)
        c.location_token("l1")
        c.location_token("l2", company_id="co")
        c.company_token("co")
        self.assertEqual(c.installed_locations("co")["locations"][0]["locationId"], "l1")
        self.assertEqual([json.loads(s["Payload"]) for s in lam.sent], [
            {"locationId": "l1", "minValiditySeconds": 960},
            {"locationId": "l2", "companyId": "co", "minValiditySeconds": 960},
            {"action": "companyToken", "companyId": "co", "minValiditySeconds": 960},
            {"action": "listInstalledLocations", "companyId": "co"},
        ])
        for s in lam.sent:
            self.assertEqual(s["FunctionName"], "arn:mint")
            self.assertEqual(json.loads(base64.b64decode(s["ClientContext"])), {"custom": {"caller": "billing"}})

    def test_the_token_never_prints(self):
        t = TokenClient(FakeLambda(token_reply(86_399)), "mint").location_token("l")
        for shown in (repr(t), str(t), repr(t.token), str(t.token), f"{t.token}"):
            self.assertNotIn("tok-0", shown)
        self.assertEqual(t.authorization(), "Bearer tok-0")
        bad = FakeLambda(lambda r, n: ok({"accessToken": "tok-leak", "expiresIn": "tok-leak2"}))
        with self.assertRaises(TokenError) as ctx:
            TokenClient(bad, "mint").location_token("l")
        self.assertEqual(ctx.exception.error_type, "BadResponse")
        self.assertNotIn("tok-leak", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
