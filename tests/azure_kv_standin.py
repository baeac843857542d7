#!/usr/bin/python3
"""A stand-in for Microsoft Entra ID's token endpoint and Azure Key Vault's wrapkey/unwrapkey.

This is a FAKE written for Keywarden's integration test (tests/byok_azure_kv_test.cc), because
no Azure Key Vault emulator exists. It implements only the logic the provider depends on, as
Microsoft documents it; it is not Azure, and a test passing against it says nothing about
behaviour of the live service that the documentation does not describe:

  POST /{tenant}/oauth2/v2.0/token        client-credentials grant (form body), checks the
                                          tenant, client id, client secret and scope; issues
                                          random bearer tokens that expire after
                                          --token-lifetime seconds
  POST /keys/{name}/{version}/wrapkey?api-version=7.4      (empty version = current one)
  POST /keys/{name}/{version}/unwrapkey?api-version=7.4
                                          check the bearer token (401 when missing, unknown or
                                          expired) and the api-version; real cryptography:
                                          RSA-OAEP-256 with RSA-2048 keys, A256KW (RFC 3394)
                                          with AES-256 keys; answer {"kid", "value"} with
                                          base64url values without padding, as Key Vault does

Test controls (no authentication; loopback only):
  GET  /_test/stats          counters as JSON
  POST /_test/fail           {"target": "vault"|"token", "count": N, "status": S}: the next N
                             requests to the target get status S (with Retry-After: 0)
  POST /_test/rotate/{name}  adds a new current version to the key
  POST /_test/revoke         forgets every issued token (the next vault request gets 401)

Usage: azure_kv_standin.py --port P --tenant T --client-id C --vault-host H --scope S
           [--token-lifetime SECONDS] --key NAME:rsa|oct [--key ...]
The client secret is read from the environment variable AZKV_STANDIN_CLIENT_SECRET.
Only the Python 3 standard library and python3-cryptography are used.
"""

import argparse
import base64
import binascii
import json
import os
import re
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

API_VERSIONS = {"7.4"}
KEY_PATH = re.compile(r"^/keys/([A-Za-z0-9-]{1,127})/([A-Za-z0-9]{0,64})/(wrapkey|unwrapkey)$")
TOKEN_PATH = re.compile(r"^/([A-Za-z0-9.-]+)/oauth2/v2\.0/token$")
B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
OAEP256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    if not isinstance(text, str) or not B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Key:
    def __init__(self, name, kind):
        self.name = name
        self.kind = kind
        self.versions = {}
        self.current = None
        self.rotate()

    def rotate(self):
        version = secrets.token_hex(16)
        if self.kind == "rsa":
            material = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            material = secrets.token_bytes(32)
        self.versions[version] = material
        self.current = version
        return version

    def algorithm(self):
        return "RSA-OAEP-256" if self.kind == "rsa" else "A256KW"

    def wrap(self, version, data):
        material = self.versions[version]
        if self.kind == "rsa":
            return material.public_key().encrypt(data, OAEP256)
        return aes_key_wrap(material, data)

    def unwrap(self, version, data):
        material = self.versions[version]
        if self.kind == "rsa":
            return material.decrypt(data, OAEP256)
        return aes_key_unwrap(material, data)


class State:
    def __init__(self, args):
        self.args = args
        self.client_secret = os.environ.get("AZKV_STANDIN_CLIENT_SECRET", "")
        self.lock = threading.Lock()
        self.tokens = {}  # token -> monotonic expiry
        self.keys = {}
        for spec in args.key:
            name, _, kind = spec.partition(":")
            if kind not in ("rsa", "oct"):
                sys.exit(f"--key {spec}: kind must be rsa or oct")
            self.keys[name] = Key(name, kind)
        self.fail = {"vault": [0, 0], "token": [0, 0]}  # target -> [count, status]
        self.stats = {
            "token_requests": 0,
            "tokens_issued": 0,
            "token_refused": 0,
            "wrapkey": 0,
            "unwrapkey": 0,
            "unauthorized": 0,
            "injected_failures": 0,
        }

    def count(self, name):
        with self.lock:
            self.stats[name] += 1

    def take_failure(self, target):
        with self.lock:
            count, status = self.fail[target]
            if count <= 0:
                return 0
            self.fail[target][0] = count - 1
            self.stats["injected_failures"] += 1
            return status


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the test opens 8+ connections at once


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY Nagle's algorithm holds
    # the body until the client's delayed ACK (~40 ms per request on a reused connection).
    disable_nagle_algorithm = True
    server_version = "azure-kv-standin"

    # ---- plumbing

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def vault_error(self, status, code, message, headers=()):
        self.send_json(status, {"error": {"code": code, "message": message}}, headers)

    def token_error(self, status, error, code, description):
        trace = secrets.token_hex(8)
        self.send_json(
            status,
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}",
                "error_codes": [code],
                "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            },
        )

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    @property
    def state(self):
        return self.server.state

    # ---- routing

    def do_GET(self):
        self.read_body()
        if urlsplit(self.path).path == "/_test/stats":
            with self.state.lock:
                self.send_json(200, dict(self.state.stats))
            return
        self.vault_error(404, "NotFound", "no such resource")

    def do_POST(self):
        body = self.read_body()
        url = urlsplit(self.path)
        if url.path.startswith("/_test/"):
            return self.control(url.path, body)
        match = TOKEN_PATH.match(url.path)
        if match:
            return self.token(match.group(1), body)
        match = KEY_PATH.match(url.path)
        if match:
            name, version, operation = match.groups()
            return self.key_operation(name, version, operation, url.query, body)
        self.vault_error(404, "NotFound", "no such resource")

    def control(self, path, body):
        state = self.state
        if path == "/_test/fail":
            request = json.loads(body)
            with state.lock:
                state.fail[request["target"]] = [int(request["count"]), int(request["status"])]
            return self.send_json(200, {})
        if path == "/_test/revoke":
            with state.lock:
                state.tokens.clear()
            return self.send_json(200, {})
        if path.startswith("/_test/rotate/"):
            with state.lock:
                key = state.keys.get(path[len("/_test/rotate/"):])
                version = key.rotate() if key else None
            if version is None:
                return self.vault_error(404, "KeyNotFound", "no such key")
            return self.send_json(200, {"version": version})
        self.vault_error(404, "NotFound", "no such control")

    # ---- Entra ID: OAuth 2.0 client credentials grant

    def token(self, tenant, body):
        state = self.state
        state.count("token_requests")
        injected = state.take_failure("token")
        if injected:
            error = {"error": "temporarily_unavailable"}
            return self.send_json(injected, error, [("Retry-After", "0")])
        content_type = self.headers.get("Content-Type") or ""
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self.token_error(400, "invalid_request", 900144, "Not a form body.")
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return self.token_error(400, "invalid_request", 900144, "Malformed form body.")
        if any(len(values) != 1 for values in form.values()):
            return self.token_error(400, "invalid_request", 90015, "A parameter is repeated.")
        field = {name: values[0] for name, values in form.items()}
        secret = field.get("client_secret", "").encode()
        if tenant != state.args.tenant:
            refused = (400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        elif field.get("grant_type") != "client_credentials":
            refused = (400, "unsupported_grant_type", 70003, "Unsupported grant type.")
        elif field.get("client_id") != state.args.client_id:
            refused = (400, "unauthorized_client", 700016, "Application not found.")
        elif not secrets.compare_digest(secret, state.client_secret.encode()):
            refused = (401, "invalid_client", 7000215, "Invalid client secret provided.")
        elif field.get("scope") != state.args.scope:
            refused = (400, "invalid_scope", 70011, "The scope is not valid.")
        else:
            refused = None
        if refused:
            state.count("token_refused")
            return self.token_error(*refused)
        token = "eyJ" + secrets.token_urlsafe(48)
        lifetime = state.args.token_lifetime
        with state.lock:
            state.tokens[token] = time.monotonic() + lifetime
            state.stats["tokens_issued"] += 1
        self.send_json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            },
        )

    # ---- Key Vault: wrapkey / unwrapkey

    def key_operation(self, name, version, operation, query, body):
        state = self.state
        injected = state.take_failure("vault")
        if injected:
            code = "Throttled" if injected == 429 else "ServiceUnavailable"
            return self.vault_error(injected, code, "injected failure", [("Retry-After", "0")])
        resource = state.args.scope[: -len("/.default")]
        login = f"https://login.microsoftonline.com/{state.args.tenant}"
        challenge = [("WWW-Authenticate", f'Bearer authorization="{login}", resource="{resource}"')]
        authorization = self.headers.get("Authorization") or ""
        if not authorization.startswith("Bearer "):
            state.count("unauthorized")
            message = "AKV10000: Request is missing a Bearer or PoP token."
            return self.vault_error(401, "Unauthorized", message, challenge)
        with state.lock:
            expiry = state.tokens.get(authorization[len("Bearer "):])
        if expiry is None or expiry <= time.monotonic():
            state.count("unauthorized")
            message = "[TokenExpired] Error validating token."
            return self.vault_error(401, "Unauthorized", message, challenge)
        api_version = parse_qs(query).get("api-version", [""])
        if len(api_version) != 1 or api_version[0] not in API_VERSIONS:
            message = f"The specified version ({api_version[0][:16]}) is not recognized."
            return self.vault_error(400, "BadParameter", message)
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self.vault_error(400, "BadParameter", "Content-Type must be application/json.")
        state.count(operation)
        with state.lock:
            key = state.keys.get(name)
            if key is not None and not version:
                version = key.current
        if key is None or version not in key.versions:
            message = f"A key with (name/id) {name}/{version} was not found in this key vault."
            return self.vault_error(404, "KeyNotFound", message)
        try:
            request = json.loads(body)
            alg = request["alg"]
            value = b64url_decode(request["value"])
            if not isinstance(alg, str):
                raise TypeError("alg")
        except (ValueError, KeyError, TypeError, binascii.Error):
            return self.vault_error(400, "BadParameter", "The request body is malformed.")
        if alg != key.algorithm():
            message = f"Algorithm {alg[:32]} is not supported for this key type."
            return self.vault_error(400, "BadParameter", message)
        try:
            if operation == "wrapkey":
                result = key.wrap(version, value)
            else:
                result = key.unwrap(version, value)
        except (ValueError, InvalidUnwrap):
            return self.vault_error(400, "BadParameter", "The parameter is incorrect.")
        kid = f"https://{state.args.vault_host}/keys/{name}/{version}"
        self.send_json(200, {"kid": kid, "value": b64url_encode(result)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--vault-host", required=True)
    parser.add_argument("--scope", required=True)
    parser.add_argument("--token-lifetime", type=int, default=3599)
    parser.add_argument("--key", action="append", required=True)
    args = parser.parse_args()
    if not os.environ.get("AZKV_STANDIN_CLIENT_SECRET"):
        sys.exit("AZKV_STANDIN_CLIENT_SECRET is not set")
    state = State(args)  # keys first: the port accepts connections once it is bound
    server = Server(("127.0.0.1", args.port), Handler)
    server.state = state
    sys.stderr.write(f"azure-kv-standin listening on 127.0.0.1:{args.port}\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
