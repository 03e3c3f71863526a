"""`python -m services.gateway --port P [--host H] [--reuse-port] [--redis-url URL]`."""

import sys

from services.gateway.server import main

sys.exit(main(sys.argv[1:]))
