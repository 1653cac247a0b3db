"""Verifies one webhook request with the Standard Webhooks reference library.

Usage: standard_verify.py SECRET < request.json, where request.json is
{"headers": {...}, "body_hex": "..."}. Prints "ok" and exits 0 when the library accepts
it, prints why and exits 1 when it refuses. The library also refuses a timestamp more
than five minutes from now, so one sent in milliseconds fails here.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

request = json.load(sys.stdin)
try:
    Webhook(sys.argv[1]).verify(bytes.fromhex(request["body_hex"]), request["headers"])
except WebhookVerificationError as error:
    print(f"refused: {error}")
    sys.exit(1)
print("ok")
