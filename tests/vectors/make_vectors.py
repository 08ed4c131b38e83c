#!/usr/bin/env python3
# Regenerate the interop vectors with an independent JOSE implementation (jwcrypto):
#   python3 -m pip install jwcrypto && python3 tests/vectors/make_vectors.py
# It writes tests/vectors/interop.jwks.json (public keys) and tests/vectors/interop_tokens.json
# (a list of {name, token, expect, ...} judged at NOW = 1800000000); tests/ect_interop.rs checks them.
# Fresh keys are generated on every run, so commit both files together.
"""ECT interop vectors minted by jwcrypto (not by the code under test)."""

import base64
import json
import os

from jwcrypto import jwk, jws
from jwcrypto.common import json_encode

HERE = os.path.dirname(os.path.abspath(__file__))

# The fixed verification time used by tests/ect_interop.rs.
NOW = 1_800_000_000
IAT = NOW - 1_000
EXP_FAR = 4_102_444_800  # 2100-01-01T00:00:00Z: valid vectors stay valid.
ISS_ES = "spiffe://interop.example/agent/es"
ISS_ED = "spiffe://interop.example/agent/ed"
AUD = "spiffe://unwind.local/coordinator"
WID = "7f1c1e7a-3b8e-4f8e-9a51-2f1f0c6a9d10"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(kty: str, crv: str) -> jwk.JWK:
    key = jwk.JWK.generate(kty=kty, crv=crv)
    # RFC 7638 thumbprint as kid, the same scheme Unwind uses for its own keys.
    kid = key.thumbprint()
    return jwk.JWK(**{**json.loads(key.export(private_key=True)), "kid": kid})


def sign(key: jwk.JWK, alg: str, typ: str, payload, extra_header=None, raw_payload=None) -> str:
    header = {"alg": alg, "typ": typ, "kid": key["kid"]}
    header.update(extra_header or {})
    body = raw_payload if raw_payload is not None else json_encode(payload)
    token = jws.JWS(body.encode() if isinstance(body, str) else body)
    token.add_signature(key, alg=alg, protected=json_encode(header))
    return token.serialize(compact=True)


def claims(jti, iss=ISS_ES, **extra):
    c = {
        "iss": iss,
        "aud": AUD,
        "iat": IAT,
        "exp": EXP_FAR,
        "jti": jti,
        "wid": WID,
        "exec_act": "tool_call",
        "par": [],
    }
    for k, v in extra.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def main():
    es = new_key("EC", "P-256")
    ed = new_key("OKP", "Ed25519")
    outsider = new_key("EC", "P-256")

    public = {"keys": []}
    for k, alg in ((es, "ES256"), (ed, "EdDSA")):
        pub = json.loads(k.export_public())
        pub.update({"alg": alg, "use": "sig"})
        public["keys"].append(pub)

    vectors = []

    def add(name, token, expect, **check):
        vectors.append({"name": name, "token": token, "expect": expect, **check})

    root = "urn:uuid:0d9c8f1e-1b2a-4c3d-8e4f-5a6b7c8d9e01"
    child = "urn:uuid:0d9c8f1e-1b2a-4c3d-8e4f-5a6b7c8d9e02"
    add("draft00-root", sign(es, "ES256", "wimse-exec+jwt", claims(root, ext={})), "ok",
        jti=root, parents=[], profile="draft-00")
    add("draft00-child",
        sign(es, "ES256", "wimse-exec+jwt",
             claims(child, par=[root], inp_hash="n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
                    out_hash="sha256:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564")),
        "ok", jti=child, parents=[root], profile="draft-00")
    add("draft00-policy-fields",
        sign(es, "ES256", "application/wimse-exec+jwt",
             claims("pol-1", par=[child], pol="spend-limit", pol_decision="rejected")),
        "ok", jti="pol-1", parents=[child], profile="draft-00",
        ext={"pol": "spend-limit", "pol_decision": "rejected"})
    add("draft01-pred-ect_ext",
        sign(es, "ES256", "exec+jwt",
             claims("d01-1", par=None, pred=[root, child],
                    ect_ext={"pol": "p1", "pol_decision": "approved", "vendor.k": [1, 2]})),
        "ok", jti="d01-1", parents=[root, child], profile="draft-01",
        ext={"pol": "p1", "pol_decision": "approved", "vendor.k": [1, 2]})
    add("eddsa-draft01",
        sign(ed, "EdDSA", "exec+jwt", claims("ed-1", iss=ISS_ED, par=None, pred=[])),
        "ok", jti="ed-1", parents=[], profile="draft-01")
    add("checkpoint",
        sign(es, "ES256", "wimse-exec+jwt",
             claims("cp-1", exec_act="checkpoint", par=[child],
                    ext={"cascade.reversible": True,
                         "cascade.rollback_uri": "https://rollback.example.com/v1/rollback/cp-1",
                         "cascade.ttl": 3600, "cascade.target": "db",
                         "cascade.description": "before the write"})),
        "ok", jti="cp-1", parents=[child], profile="draft-00")

    good = sign(es, "ES256", "wimse-exec+jwt", claims("tamper-1"))
    h, _, s = good.split(".")
    evil = b64(json_encode(claims("tamper-1", aud="spiffe://evil.example")).encode())
    add("tampered-payload", f"{h}.{evil}.{s}", "invalid_signature")
    add("expired",
        sign(es, "ES256", "wimse-exec+jwt", claims("exp-1", iat=NOW - 7200, exp=NOW - 3600)),
        "expired")
    add("not-yet-valid",
        sign(es, "ES256", "wimse-exec+jwt", claims("nyv-1", iat=NOW + 3600, exp=EXP_FAR)),
        "not_yet_valid")
    add("checkpoint-metadata-uri",
        sign(es, "ES256", "wimse-exec+jwt",
             claims("cp-2", exec_act="checkpoint",
                    ext={"cascade.reversible": True,
                         "cascade.rollback_uri": "http://169.254.169.254/latest/meta-data"})),
        "rollback_uri_not_allowed")
    add("checkpoint-without-reversible",
        sign(es, "ES256", "wimse-exec+jwt", claims("cp-3", exec_act="checkpoint", ext={})),
        "invalid_checkpoint")
    add("par-and-pred",
        sign(es, "ES256", "wimse-exec+jwt", claims("pp-1", par=[root], pred=[root])),
        "invalid_claims")
    add("unknown-kid", sign(outsider, "ES256", "wimse-exec+jwt", claims("out-1")), "unknown_key")
    add("unknown-issuer",
        sign(es, "ES256", "wimse-exec+jwt", claims("ui-1", iss="spiffe://elsewhere.example/a")),
        "unknown_issuer")
    add("jku-header",
        sign(es, "ES256", "wimse-exec+jwt", claims("jku-1"),
             extra_header={"jku": "https://evil.example/jwks.json"}),
        "invalid_header")
    add("wrong-typ", sign(es, "ES256", "JWT", claims("typ-1")), "invalid_typ")
    add("duplicate-claim",
        sign(es, "ES256", "wimse-exec+jwt", None,
             raw_payload=json_encode(claims("dup-1"))[:-1] + ', "jti": "dup-2"}'),
        "malformed")

    # alg "none" (unsigned, L1) and HS256 keyed with the issuer's public JWK.
    unsigned_h = b64(json_encode({"alg": "none", "typ": "wimse-exec+jwt", "kid": es["kid"]}).encode())
    unsigned_p = b64(json_encode(claims("none-1")).encode())
    add("alg-none-unsigned", f"{unsigned_h}.{unsigned_p}.", "malformed")
    hs_key = jwk.JWK(kty="oct", k=b64(es.export_public().encode()), kid=es["kid"])
    add("hs256-public-key-as-secret",
        sign(hs_key, "HS256", "wimse-exec+jwt", claims("hs-1")), "alg_not_allowed")

    with open(os.path.join(HERE, "interop.jwks.json"), "w") as f:
        json.dump(public, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(HERE, "interop_tokens.json"), "w") as f:
        json.dump(vectors, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
