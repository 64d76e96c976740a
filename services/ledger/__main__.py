"""`python -m services.ledger`: the ledger alone, against NATS_URL."""

from libs.common.service import main
from services.ledger.service import Ledger

main(Ledger)
