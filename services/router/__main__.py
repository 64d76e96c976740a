"""`python -m services.router`: the router alone, against NATS_URL."""

from libs.common.service import main
from services.router.service import Router

main(Router)
