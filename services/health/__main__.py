"""`python -m services.health`: the health alone, against NATS_URL."""

from libs.common.service import main
from services.health.service import Health

main(Health)
