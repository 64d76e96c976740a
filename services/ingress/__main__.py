"""`python -m services.ingress`: the ingress alone, against NATS_URL (as `switchman run ingress`)."""

from services.runner import load_or_exit, start

start(("ingress",), load_or_exit(serves_http=True))
