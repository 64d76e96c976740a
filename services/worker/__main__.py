"""`python -m services.worker`: the worker alone, against NATS_URL."""

from libs.common.service import main
from services.worker.service import Worker

main(Worker)
