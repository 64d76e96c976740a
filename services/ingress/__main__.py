from services.runner import run_one

run_one("ingress")
