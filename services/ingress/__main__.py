"""`python -m services.ingress`: the ingress alone, against NATS_URL."""

from libs.common.service import main
from services.ingress.service import Ingress

main(Ingress)
