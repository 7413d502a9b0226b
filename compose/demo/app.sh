#!/bin/sh
# A demo service writing realistic logs to stdout/stderr, a few lines a second, for the
# compose stack (busybox sh; no other tool needed):
#   web-gateway          JSON access logs with levels (info, warn on 4xx, error on 5xx)
#   order-api            logfmt lines, some warnings
#   fulfillment-worker   plain lines, and now and then an error with a multi-line Python
#                        stack trace on stderr
# Every record carries seq=<n>, counting from 1, so a reader can tell a lost or doubled
# line from a repeated one (stack frames repeat).
set -eu
service=${1:?usage: app.sh web-gateway|order-api|fulfillment-worker}
n=0

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
pick() { shift $((RANDOM % $# )); echo "$1"; }

web_gateway() {
  path=$(pick /api/orders /api/orders/$((RANDOM % 900 + 100)) /api/cart /healthz /api/login /api/products)
  method=$(pick GET GET GET POST PUT)
  status=$(pick 200 200 200 200 200 201 204 304 404 429 500 503)
  ms=$((RANDOM % 250 + 2))
  level=info
  [ "$status" -ge 400 ] && level=warn
  [ "$status" -ge 500 ] && level=error
  printf '{"ts":"%s","level":"%s","msg":"request completed","method":"%s","path":"%s","status":%d,"duration_ms":%d,"request_id":"%04x%04x","seq":%d}\n' \
    "$(now)" "$level" "$method" "$path" "$status" "$ms" "$RANDOM" "$RANDOM" "$n"
}

order_api() {
  order=$((RANDOM % 90000 + 10000))
  case $((RANDOM % 10)) in
  0) printf 'ts=%s level=warn msg="payment retry" order_id=%d attempt=%d provider=stripe seq=%d\n' \
    "$(now)" "$order" $((RANDOM % 3 + 2)) "$n" ;;
  1 | 2) printf 'ts=%s level=debug msg="cache miss" key="customer:%d" seq=%d\n' \
    "$(now)" $((RANDOM % 5000)) "$n" ;;
  *) printf 'ts=%s level=info msg="order placed" order_id=%d customer_id=%d items=%d total=%d.%02d currency=EUR seq=%d\n' \
    "$(now)" "$order" $((RANDOM % 5000)) $((RANDOM % 6 + 1)) $((RANDOM % 400 + 5)) $((RANDOM % 100)) "$n" ;;
  esac
}

fulfillment_worker() {
  order=$((RANDOM % 90000 + 10000))
  if [ $((RANDOM % 8)) -eq 0 ]; then
    {
      printf '%s ERROR fulfillment failed order_id=%d seq=%d\n' "$(now)" "$order" "$n"
      printf 'Traceback (most recent call last):\n'
      printf '  File "/app/worker/main.py", line 88, in run\n'
      printf '    self.fulfil(order)\n'
      printf '  File "/app/worker/main.py", line 131, in fulfil\n'
      printf '    label = self.carrier.create_label(order.address)\n'
      printf '  File "/app/worker/carrier.py", line 54, in create_label\n'
      printf '    raise CarrierTimeout(f"no answer from {self.name} within {self.timeout}s")\n'
      printf 'worker.carrier.CarrierTimeout: no answer from dhl within 5s\n'
    } >&2
  else
    printf '%s INFO shipment created order_id=%d carrier=%s parcels=%d seq=%d\n' \
      "$(now)" "$order" "$(pick dhl ups dpd)" $((RANDOM % 3 + 1)) "$n"
  fi
}

while :; do
  n=$((n + 1))
  case $service in
  web-gateway) web_gateway ;;
  order-api) order_api ;;
  fulfillment-worker) fulfillment_worker ;;
  *) echo "unknown service $service" >&2; exit 2 ;;
  esac
  # 2-5 records a second.
  sleep "0.$((RANDOM % 3 + 2))"
done
