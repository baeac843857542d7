#!/usr/bin/env python3
"""A stand-in for Google Cloud KMS (REST v1) and Google's OAuth 2.0 token endpoint.

tests/byok_gcp_test.cc runs the GCP KEK provider (src/byok/gcp_kms.cc) against it. It exists
because no emulator of Cloud KMS exists (Google ships none, and neither moto nor LocalStack covers
it); it implements the parts of the published REST contract that the provider uses, with real
cryptography, so that the provider's requests are checked rather than just answered:

  POST <token_uri path>  RFC 7523 JWT bearer grant: the assertion's RS256 signature is verified
                         with the service account's public key, and its iss, aud, scope, iat and
                         exp are checked (Google: "Using OAuth 2.0 for Server to Server
                         Applications"); answers {"access_token", "expires_in", "token_type"}
                         with tokens that expire after --token-lifetime seconds.
  POST /v1/KEY:encrypt   bearer token checked (401 UNAUTHENTICATED otherwise), unknown key → 403
  POST /v1/KEY:decrypt   PERMISSION_DENIED as Google answers for a key the caller cannot use;
                         AES-256-GCM with the request's additionalAuthenticatedData; the request
                         CRC32C fields are checked (400 INVALID_ARGUMENT on mismatch) and the
                         response carries ciphertextCrc32c / verified*Crc32c / plaintextCrc32c;
                         a ciphertext that does not decrypt → 400 INVALID_ARGUMENT, as KMS does.

Test switches (not part of any Google API):
  POST /control  JSON with any of: token_lifetime (s), token_delay (s, before each token
                 answer), corrupt ("none" | "encrypt" | "decrypt": send a wrong CRC32C),
                 unverified (bool: verifiedPlaintextCrc32c false), fail_next (N: answer the next N
                 KMS requests with 503), revoke_tokens (bool: forget every issued token).
  GET  /stats    {"token_requests", "encrypt_requests", "decrypt_requests", "unauthenticated",
                  "issued_tokens"}.

Python 3 standard library + python3-cryptography. Listens on 127.0.0.1 only.
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
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCOPE = "https://www.googleapis.com/auth/cloudkms"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
KMS_PATH = re.compile(
    r"^/v1/(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+):(encrypt|decrypt)$")


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C as in RFC 3720 section B.4 (independent of the provider's implementation)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class State:
    def __init__(self, args):
        with open(args.public_key, "rb") as f:
            self.public_key = serialization.load_pem_public_key(f.read())
        self.client_email = args.client_email
        self.token_uri = args.token_uri
        self.token_path = urllib.parse.urlsplit(args.token_uri).path
        self.keys = {name: AESGCM.generate_key(bit_length=256) for name in args.key}
        self.lock = threading.Lock()
        self.tokens = {}  # token -> expiry (time.monotonic())
        self.token_lifetime = args.token_lifetime
        self.token_delay = 0.0
        self.corrupt = "none"
        self.unverified = False
        self.fail_next = 0
        self.stats = {"token_requests": 0, "encrypt_requests": 0, "decrypt_requests": 0,
                      "unauthenticated": 0}


def google_error(code, status, message):
    return code, {"error": {"code": code, "message": message, "status": status}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY Nagle's algorithm holds
    # the body until the client's delayed ACK (~40 ms per request on a reused connection).
    disable_nagle_algorithm = True
    server_version = "gcp-kms-standin"
    state = None  # set in main()

    def log_message(self, fmt, *args):  # request lines only; never bodies
        sys.stderr.write("standin: " + (fmt % args) + "\n")

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self):
        st = self.state
        if self.path == "/stats":
            with st.lock:
                body = dict(st.stats)
                body["issued_tokens"] = list(st.tokens.keys())
            self.reply(200, body)
            return
        self.reply(*google_error(404, "NOT_FOUND", "no such path"))

    def do_POST(self):
        body = self.read_body()
        path = self.path
        if path == "/control":
            self.control(json.loads(body or b"{}"))
        elif path == self.state.token_path:
            self.token(body)
        else:
            match = KMS_PATH.match(path)
            if match is None:
                self.reply(*google_error(404, "NOT_FOUND", "no such method"))
            else:
                self.kms(match.group(1), match.group(2), body)

    def control(self, settings):
        st = self.state
        with st.lock:
            if "token_lifetime" in settings:
                st.token_lifetime = int(settings["token_lifetime"])
            if "token_delay" in settings:
                st.token_delay = float(settings["token_delay"])
            if "corrupt" in settings:
                st.corrupt = settings["corrupt"]
            if "unverified" in settings:
                st.unverified = bool(settings["unverified"])
            if "fail_next" in settings:
                st.fail_next = int(settings["fail_next"])
            if settings.get("revoke_tokens"):
                st.tokens.clear()
        self.reply(200, {})

    # --- OAuth 2.0 token endpoint (RFC 7523 section 2.1, RFC 6749 section 5) ---

    def token_error(self, error, description):
        self.reply(400, {"error": error, "error_description": description})

    def token(self, body):
        st = self.state
        with st.lock:
            st.stats["token_requests"] += 1
            delay = st.token_delay
        if delay > 0:
            time.sleep(delay)
        if not self.headers.get("Content-Type", "").startswith(
                "application/x-www-form-urlencoded"):
            self.token_error("invalid_request", "Content-Type must be form-urlencoded")
            return
        form = urllib.parse.parse_qs(body.decode("ascii", "replace"), strict_parsing=False)
        if form.get("grant_type") != [GRANT_TYPE]:
            self.token_error("unsupported_grant_type", "Invalid grant_type.")
            return
        assertion = (form.get("assertion") or [""])[0]
        parts = assertion.split(".")
        if len(parts) != 3:
            self.token_error("invalid_grant", "Invalid JWT: Token must be a short-lived token.")
            return
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            self.token_error("invalid_grant", "Invalid JWT: malformed.")
            return
        if header.get("alg") != "RS256":
            self.token_error("invalid_grant", "Invalid JWT: alg must be RS256.")
            return
        try:
            st.public_key.verify(signature, (parts[0] + "." + parts[1]).encode("ascii"),
                                 padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            self.token_error("invalid_grant", "Invalid JWT Signature.")
            return
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if claims.get("iss") != st.client_email:
            self.token_error("invalid_grant", "Invalid JWT: iss is not the service account.")
        elif claims.get("aud") != st.token_uri:
            self.token_error("invalid_grant", "Invalid JWT: aud is not the token URI.")
        elif SCOPE not in str(claims.get("scope", "")).split(" "):
            self.token_error("invalid_scope", "The cloudkms scope was not requested.")
        elif not isinstance(iat, int) or not isinstance(exp, int):
            self.token_error("invalid_grant", "Invalid JWT: iat and exp must be integers.")
        elif iat > now + 60 or exp <= now or exp <= iat or exp - iat > 3600:
            self.token_error("invalid_grant",
                             "Invalid JWT: Token must be a short-lived token (60 minutes) and in "
                             "a reasonable timeframe.")
        else:
            token = "ya29.standin-" + secrets.token_urlsafe(32)
            with st.lock:
                lifetime = st.token_lifetime
                st.tokens[token] = time.monotonic() + lifetime
            self.reply(200, {"access_token": token, "expires_in": lifetime,
                             "token_type": "Bearer"})

    # --- Cloud KMS cryptoKeys.encrypt / cryptoKeys.decrypt ---

    def authorized(self):
        st = self.state
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with st.lock:
            expiry = st.tokens.get(token)
            ok = expiry is not None and time.monotonic() < expiry
            if not ok:
                st.stats["unauthenticated"] += 1
        return ok

    def kms(self, name, method, body):
        st = self.state
        with st.lock:
            st.stats[method + "_requests"] += 1
        if not self.authorized():
            self.reply(*google_error(
                401, "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential."))
            return
        with st.lock:
            fail = st.fail_next > 0
            if fail:
                st.fail_next -= 1
            corrupt, unverified = st.corrupt, st.unverified
        if fail:
            self.reply(*google_error(503, "UNAVAILABLE", "The service is currently unavailable."))
            return
        key = st.keys.get(name)
        if key is None:
            permission = ("cloudkms.cryptoKeyVersions.useToEncrypt" if method == "encrypt"
                          else "cloudkms.cryptoKeyVersions.useToDecrypt")
            self.reply(*google_error(
                403, "PERMISSION_DENIED",
                f"Permission '{permission}' denied on resource '{name}' (or it may not exist)."))
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self.reply(*google_error(400, "INVALID_ARGUMENT", "Content-Type must be JSON."))
            return
        try:
            request = json.loads(body)
            data_field = "plaintext" if method == "encrypt" else "ciphertext"
            data = base64.b64decode(request[data_field], validate=True)
            aad = base64.b64decode(request.get("additionalAuthenticatedData", ""), validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            self.reply(*google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload."))
            return
        for field, value in ((data_field + "Crc32c", data),
                             ("additionalAuthenticatedDataCrc32c", aad)):
            if field in request and int(request[field]) != crc32c(value):
                self.reply(*google_error(
                    400, "INVALID_ARGUMENT",
                    f"The checksum in field {field} did not match the data in the request."))
                return
        aesgcm = AESGCM(key)
        if method == "encrypt":
            nonce = os.urandom(12)
            ciphertext = nonce + aesgcm.encrypt(nonce, data, aad)
            crc = crc32c(ciphertext)
            if corrupt == "encrypt":
                crc ^= 1
            self.reply(200, {
                "name": name + "/cryptoKeyVersions/1",
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "ciphertextCrc32c": str(crc),
                "verifiedPlaintextCrc32c": "plaintextCrc32c" in request and not unverified,
                "verifiedAdditionalAuthenticatedDataCrc32c":
                    "additionalAuthenticatedDataCrc32c" in request,
                "protectionLevel": "SOFTWARE",
            })
            return
        try:
            if len(data) < 12 + 16:
                raise InvalidTag()
            plaintext = aesgcm.decrypt(data[:12], data[12:], aad)
        except InvalidTag:
            self.reply(*google_error(400, "INVALID_ARGUMENT",
                                     "Decryption failed: the ciphertext is invalid."))
            return
        crc = crc32c(plaintext)
        if corrupt == "decrypt":
            crc ^= 1
        self.reply(200, {
            "plaintext": base64.b64encode(plaintext).decode(),
            "plaintextCrc32c": str(crc),
            "usedPrimary": True,
            "protectionLevel": "SOFTWARE",
        })


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-key", required=True,
                        help="PEM file: the service account's public key")
    parser.add_argument("--client-email", required=True)
    parser.add_argument("--token-uri", required=True, help="the key file's token_uri (JWT aud)")
    parser.add_argument("--key", action="append", required=True,
                        help="resource name of a key: projects/P/locations/L/keyRings/R/"
                             "cryptoKeys/K (repeatable)")
    parser.add_argument("--token-lifetime", type=int, default=3600)
    args = parser.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
