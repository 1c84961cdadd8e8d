"""Fetch step: read the review export and print it as a JSON state delta.

A real pipeline would call an API here; this one reads a file so the example
runs offline. Prints {"reviews": [...]} on stdout (the node uses `output: json`).
"""

import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    reviews = json.load(f)
print(json.dumps({"reviews": reviews}))
