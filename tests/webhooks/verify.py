"""Verifies easel's callbacks with the Standard Webhooks reference implementation (the
`standardwebhooks` package from PyPI, pinned in infra/test-tools.txt), independently of easel's
own signing code.

Reads one JSON object per line on stdin: {"secret": "whsec_...", "headers": {...},
"body_b64": "..."}; prints one line per object: "verified" or "rejected: <reason>".
"""
import base64
import json
import sys

from standardwebhooks import Webhook

for line in sys.stdin:
    case = json.loads(line)
    body = base64.b64decode(case["body_b64"])
    try:
        Webhook(case["secret"]).verify(body, case["headers"])
        print("verified", flush=True)
    except Exception as e:  # the library raises WebhookVerificationError
        print(f"rejected: {type(e).__name__}: {e}", flush=True)
