"""`python -m services.ingress`: the ingress alone, against NATS_URL (refuses an open gateway)."""

from libs.common.service import main
from services.ingress.service import Ingress

main(Ingress, serves_http=True)
