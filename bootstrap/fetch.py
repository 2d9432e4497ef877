# Ballast bootstrap downloads with nothing but python3's standard library
# (wherever cloud-init runs, python3 runs): no curl, no openssl.
#   pin ADDRS FINGERPRINT OUT     fetch the controller's CA certificate over a
#                                 first, unverified connection; keep it only if
#                                 its SHA-256 is FINGERPRINT and the server
#                                 proves it holds a certificate the CA issued
#   get ADDRS PATH OUT CAFILE     download https://ADDR/PATH, verified against
#                                 CAFILE only (hostname included)
# ADDRS is HOST:PORT or several, comma-separated: a controller that cannot be
# reached (or fails TLS) is passed over for the next; one that answers with an
# error, or a CA with another fingerprint, ends the command.
# No redirects, no proxies; every error names the URL and exits 1.
import hashlib
import http.client
import os
import ssl
import sys
import urllib.parse

CA_PATH = "/bootstrap/ca.pem"


def fail(msg):
    print("ballast-fetch: " + msg, file=sys.stderr)
    sys.exit(1)


class Unreachable(Exception):
    """No answer from this controller (connection or TLS): try the next."""


def fetch(addr, path, ctx, sink, limit):
    url = "https://" + addr + path
    conn = http.client.HTTPSConnection(addr, context=ctx, timeout=60)
    try:
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable("GET %s: %s" % (url, e))
        if resp.status in (401, 403):
            why = resp.read(300).decode("utf-8", "replace").strip()
            fail("GET %s: refused by the controller: %s" % (url, why))
        if resp.status != 200:
            text = resp.read(300).decode("utf-8", "replace").strip()
            fail("GET %s: HTTP %d %s: %s" % (url, resp.status, resp.reason, text))
        if resp.getheader("grpc-status") is not None:
            # Controllers before plain-HTTP refusals answered with a gRPC
            # status: HTTP 200, an empty body and grpc-status.
            why = urllib.parse.unquote(resp.getheader("grpc-message", ""))
            fail("GET %s: refused by the controller: %s" % (url, why))
        total = 0
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                fail("GET %s: more than %d bytes" % (url, limit))
            sink(chunk)
    except (OSError, http.client.HTTPException) as e:
        fail("GET %s: %s" % (url, e))
    finally:
        conn.close()


def fetch_bytes(addr, path, ctx, limit):
    parts = []
    fetch(addr, path, ctx, parts.append, limit)
    return b"".join(parts)


def write_new(out, data, mode):
    tmp = out + ".part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def each(addrs, attempt):
    """Runs attempt(addr) for each address until one is reached."""
    unreachable = []
    for addr in addrs.split(","):
        try:
            return attempt(addr.strip())
        except Unreachable as e:
            unreachable.append(str(e))
    fail("no controller reachable: " + "; ".join(unreachable))


def pin(addrs, fingerprint, out):
    each(addrs, lambda addr: pin_at(addr, fingerprint, out))


def pin_at(addr, fingerprint, out):
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    pem = fetch_bytes(addr, CA_PATH, unverified, 64 * 1024)
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as e:
        fail("the CA certificate from %s is not a PEM certificate: %s" % (addr, e))
    got = "sha256:" + hashlib.sha256(der).hexdigest()
    if got != fingerprint:
        fail("the controller at %s did not present a CA with fingerprint %s (got %s)"
             % (addr, fingerprint, got))
    ca = ssl.DER_cert_to_PEM_cert(der)
    # The certificate is the pinned CA; this server must also hold a key it certified.
    fetch_bytes(addr, CA_PATH, ssl.create_default_context(cadata=ca), 64 * 1024)
    write_new(out, ca.encode("ascii"), 0o644)


def get(addrs, path, out, cafile):
    each(addrs, lambda addr: get_at(addr, path, out, cafile))


def get_at(addr, path, out, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    tmp = out + ".part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            fetch(addr, path, ctx, f.write, 1 << 30)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, out)


def main(argv):
    if len(argv) == 4 and argv[0] == "pin":
        pin(argv[1], argv[2], argv[3])
    elif len(argv) == 5 and argv[0] == "get":
        get(argv[1], argv[2], argv[3], argv[4])
    else:
        fail("usage: pin ADDRS FINGERPRINT OUT | get ADDRS PATH OUT CAFILE")


main(sys.argv[1:])
